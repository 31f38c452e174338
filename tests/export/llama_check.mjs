// Reads a GGUF with llama.cpp (through node-llama-cpp's prebuilt binaries) and reports what it
// sees, as JSON on stdout, for tests/export/test_export_llamacpp.py to compare with our model:
//   - llama.cpp's tokenisation of each prompt text (special tokens parsed),
//   - greedy generation from each prompt's token ids, optionally with a LoRA GGUF applied,
//   - the prompt the GGUF's own chat template renders for each conversation (node-llama-cpp's
//     JinjaTemplateChatWrapper over the template stored in the file), as tokens,
//   - the metadata llama.cpp read (architecture, pre-tokenizer, EOG tokens).
//
// Usage: node llama_check.mjs request.json     (request: see the Python test)
// NODE_PATH-free: the test runs it with the folder holding node_modules as --prefix's parent.
import fs from "node:fs";
import path from "node:path";
import {createRequire} from "node:module";

const request = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(request.node_modules_parent, "index.js"));
const nlc = await import(require.resolve("node-llama-cpp"));
const {getLlama, LlamaLogLevel, JinjaTemplateChatWrapper} = nlc;

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: request.model});
const contextOptions = {contextSize: request.context_size ?? 512, threads: 1};
if (request.lora) contextOptions.lora = {adapters: [{filePath: request.lora, scale: 1}]};
const context = await model.createContext(contextOptions);

const out = {
    architecture: model.fileInfo.metadata.general.architecture,
    pre: model.fileInfo.metadata.tokenizer?.ggml?.pre ?? null,
    chat_template: model.fileInfo.metadata.tokenizer?.chat_template ?? null,
    eos: model.tokens.eos,
    eot: model.tokens.eot,
    prompts: [],
    chats: [],
};

for (const prompt of request.prompts) {
    const ids = Array.from(model.tokenize(prompt.text, true));
    const sequence = context.getSequence();
    const generated = [];
    for await (const token of sequence.evaluate(prompt.ids, {temperature: 0})) {
        generated.push(token); // evaluate() ends by itself at an end-of-generation token
        if (model.isEogToken(token)) break;
        if (generated.length >= request.max_new_tokens) break;
    }
    sequence.dispose();
    out.prompts.push({tokens: ids, generated});
}

if (out.chat_template) {
    const wrapper = new JinjaTemplateChatWrapper({
        template: out.chat_template,
        reasoning: null, // pass no enable_thinking: the template's own default applies, as in llama.cpp
        convertUnsupportedSystemMessagesToUserMessages: false,
        trimLeadingWhitespaceInResponses: false,
    });
    for (const messages of request.chats) {
        const chatHistory = messages.map((m) =>
            m.role === "system" ? {type: "system", text: m.content}
                : m.role === "user" ? {type: "user", text: m.content}
                    : {type: "model", response: [m.content]});
        chatHistory.push({type: "model", response: []});
        const {contextText} = wrapper.generateContextState({chatHistory});
        out.chats.push({tokens: Array.from(contextText.tokenize(model.tokenizer))});
    }
}

await context.dispose();
await model.dispose();
process.stdout.write(JSON.stringify(out));
process.exit(0);
