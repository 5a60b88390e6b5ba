# The encoders tests/runner/test_masking.py pipes secrets through: `xxd -p`
# (Debian ships xxd apart from vim), `openssl genpkey` for a real multi-line
# key; `base64`, `basenc` and `od` come with coreutils. No daemon to start.
# Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(xxd openssl coreutils)
