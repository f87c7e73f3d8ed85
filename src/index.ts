// Public entry point of the vhost-user package; modules re-export here as they land.
export {};
