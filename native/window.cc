/*
 * External ArrayBuffers that V8 does not charge as external memory.
 *
 * napi_create_external_arraybuffer gives the buffer a finalizer-backed
 * deleter, so V8 counts its whole length as external memory and forces a
 * full mark-compact whenever that grows past its soft limit (64 MiB over the
 * last GC): 10-35 ms per 4 GiB window, 13.9 s for the 512 windows of a 2^40-
 * byte region, with the event loop blocked. The windows alias a file mapping
 * that V8 neither owns nor frees (munmap does), which is exactly the case of
 * BackingStore::EmptyDeleter: V8 does not account such stores at all.
 *
 * This is the one place the addon uses the V8 API directly. It relies on
 * napi_value being a v8::Local's slot address, which holds for every Node.js
 * release (js_native_api_v8.h: JsValueFromV8LocalValue); the addon is built
 * from source against the running Node.js, never shipped prebuilt.
 */
#include <node_api.h>
#include <v8.h>

#include <memory>

extern "C" napi_value window_create(napi_env env, void *data, size_t length) {
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  if (isolate == nullptr) return nullptr;
  std::unique_ptr<v8::BackingStore> store =
      v8::ArrayBuffer::NewBackingStore(data, length, v8::BackingStore::EmptyDeleter, nullptr);
  v8::Local<v8::ArrayBuffer> ab = v8::ArrayBuffer::New(isolate, std::move(store));
  v8::Local<v8::Value> value = ab;
  return reinterpret_cast<napi_value>(*value);
}
