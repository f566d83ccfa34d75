// The bundle container, manifest and trust policy (see docs/bundle-format.md).
