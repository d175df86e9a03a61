"""The messages: sandboxed rendering, the MIME bytes, the proofs that every message builds, previews and the gallery."""
