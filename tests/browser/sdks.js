// The official SDKs a browser app would use, bundled into one module for the browser tests.
export { default as OpenAI } from "openai";
export { default as Anthropic } from "@anthropic-ai/sdk";
export { streamText } from "ai";
export { createOpenAICompatible } from "@ai-sdk/openai-compatible";
