"""The wire format: tensors as dtype + shape + raw bytes in chunks (codec), and how a
training op and its reply become messages and back (ops). Nothing here opens a
connection; nothing here unpickles."""
