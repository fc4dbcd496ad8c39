// Server-sent events read from a fetch response body, as EventSource parses them
// (WHATWG HTML, "Parsing an event stream"), but after a POST with headers, which
// EventSource cannot send. Yields {event, data} per event; comments (": ping") are skipped.

export async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let event = "";
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        return;
      }
      buffer += value;
      for (;;) {
        const end = buffer.search(/[\r\n]/);
        if (end < 0) break;
        // A CR at the very end may be the first half of a CRLF still on its way.
        if (buffer[end] === "\r" && end === buffer.length - 1) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(buffer[end] === "\r" && buffer[end + 1] === "\n" ? end + 2 : end + 1);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n") };
          data = [];
          event = "";
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") data.push(text);
          else if (field === "event") event = text;
        }
      }
    }
  } finally {
    // A reader that stops early (an error event, a stop) closes the connection.
    if (!finished) await reader.cancel().catch(() => {});
  }
}
