// The official openai Node SDK (pinned in package.json) against a running `bitnet serve`.
// Usage: node client.mjs BASE_URL API_KEY MODEL HIDDEN_SIZE
// Each check prints one "ok ..." line; any failure throws, and the process exits non-zero.
import assert from "node:assert/strict";
import OpenAI from "openai";

const [baseURL, apiKey, model, hidden] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0 });

const models = await client.models.list();
const entry = models.data.find((m) => m.id === model);
assert.ok(entry, `model ${model} in ${JSON.stringify(models.data)}`);
assert.ok(entry.context_length > 0);
console.log(`ok models: ${models.data.map((m) => m.id).join(", ")} (context ${entry.context_length})`);

const ask = { model, messages: [{ role: "user", content: "Say something." }], max_tokens: 12, temperature: 0 };
const whole = await client.chat.completions.create(ask);
const text = whole.choices[0].message.content;
assert.equal(typeof text, "string");
assert.ok(["stop", "length"].includes(whole.choices[0].finish_reason));
assert.equal(whole.usage.completion_tokens, whole.usage.total_tokens - whole.usage.prompt_tokens);
console.log(`ok chat: ${JSON.stringify(text)}`);

const stream = await client.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(streamed, text, "greedy: the stream spells the same text");
assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
console.log("ok chat stream equals the whole answer");

const lp = await client.chat.completions.create({ ...ask, logprobs: true, top_logprobs: 2 });
const content = lp.choices[0].logprobs.content;
assert.equal(content.length, lp.usage.completion_tokens);
for (const t of content) {
  assert.ok(t.logprob <= 0 && t.top_logprobs.length === 2, JSON.stringify(t));
}
console.log(`ok logprobs: ${content.length} tokens`);

const done = await client.completions.create({ model, prompt: "The economy", max_tokens: 6, temperature: 0 });
assert.equal(typeof done.choices[0].text, "string");
console.log(`ok completion: ${JSON.stringify(done.choices[0].text)}`);

// The SDK asks for base64 and decodes it.
const emb = await client.embeddings.create({ model, input: ["The economy", "Our nation"] });
assert.equal(emb.data.length, 2);
assert.equal(emb.data[0].embedding.length, Number(hidden));
const norm = Math.sqrt(emb.data[0].embedding.reduce((s, x) => s + x * x, 0));
assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
console.log(`ok embeddings: ${emb.data.length} x ${emb.data[0].embedding.length}`);

await assert.rejects(
  client.chat.completions.create({ ...ask, temperature: -1 }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature",
);
await assert.rejects(
  new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list(),
  (e) => e instanceof OpenAI.AuthenticationError,
);
console.log("ok errors: BadRequestError naming temperature, AuthenticationError");

// runTools: the SDK calls our function with the arguments the model wrote (constrained to the schema by the
// named tool_choice), sends the result back as a tool message, and stops after that one call.
const calls = [];
const runner = client.chat.completions.runTools({
  model,
  max_tokens: 60,
  temperature: 0,
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
  tool_choice: { type: "function", function: { name: "get_weather" } },
  tools: [{
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city.",
      parameters: {
        type: "object",
        properties: { city: { type: "string", maxLength: 12 } },
        required: ["city"],
        additionalProperties: false,
      },
      parse: JSON.parse,
      function: (args) => {
        calls.push(args);
        return { city: args.city, sky: "clear" };
      },
    },
  }],
});
await runner.done();
assert.equal(calls.length, 1, `one call: ${JSON.stringify(runner.messages)}`);
assert.equal(typeof calls[0].city, "string");
const toolMessage = runner.messages.find((m) => m.role === "tool");
assert.ok(toolMessage && toolMessage.content.includes("clear"), JSON.stringify(runner.messages));
console.log(`ok runTools: get_weather(${JSON.stringify(calls[0])})`);
