"""Vision-language backends behind one interface: an SGLang HTTP client and in-process transformers."""
