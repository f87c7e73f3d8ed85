{
  "targets": [
    {
      "target_name": "vhost_user_native",
      "sources": ["native/addon.c", "native/sock.c", "native/mem.c", "native/watch.c", "native/guard.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
