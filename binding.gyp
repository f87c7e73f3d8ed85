{
  "targets": [
    {
      "target_name": "vhost_user_native",
      "sources": ["native/addon.c", "native/sock.c", "native/mem.c", "native/watch.c", "native/guard.c", "native/window.cc", "native/fdops.c", "native/netlink.c", "native/uring.c", "native/uffd.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_c": ["-std=gnu11"],
      "cflags_cc": ["-std=gnu++17"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
