// Drives the gateway with the official `openai` npm SDK: one plain and one
// streamed chat completion. Prints one JSON line on stdout; on any failure it
// prints the error on stderr and exits non-zero.
//
//   GATEWAY_URL  gateway base URL (without /v1), required
//   GATEWAY_KEY  app key (sk-...), required
//   MODEL        gateway model name, default "up-chat"
//
// Output: {"text", "streamText", "chunks", "totalChunks", "usage", "model", "streamModel"}
// where `chunks` counts the stream chunks that carried non-empty delta content
// and `usage` is the usage object of the last chunk.
import OpenAI from "openai";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

async function main() {
  const client = new OpenAI({
    baseURL: `${required("GATEWAY_URL").replace(/\/+$/, "")}/v1`,
    apiKey: required("GATEWAY_KEY"),
    maxRetries: 0,
    timeout: 30_000,
  });
  const model = process.env.MODEL || "up-chat";
  const messages = [{ role: "user", content: "hello from node" }];

  const completion = await client.chat.completions.create({ model, messages });
  const text = completion.choices[0]?.message?.content ?? "";

  const stream = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  let streamText = "";
  let chunks = 0;
  let totalChunks = 0;
  let last = null;
  const models = new Set();
  for await (const chunk of stream) {
    totalChunks += 1;
    last = chunk;
    models.add(chunk.model);
    for (const choice of chunk.choices) {
      const content = choice.delta?.content;
      if (content) {
        streamText += content;
        chunks += 1;
      }
    }
  }
  if (last === null) {
    throw new Error("the stream ended without any chunk");
  }
  if (models.size !== 1) {
    throw new Error(`stream chunks name different models: ${JSON.stringify([...models])}`);
  }

  const result = {
    text,
    streamText,
    chunks,
    totalChunks,
    usage: last.usage ?? null,
    model: completion.model,
    streamModel: last.model,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  const detail = err instanceof OpenAI.APIError ? ` (status ${err.status}, body ${JSON.stringify(err.error)})` : "";
  process.stderr.write(`sdk_check failed: ${err?.stack ?? err}${detail}\n`);
  process.exit(1);
});
