//! Graph preparation passes run before quantization planning.
