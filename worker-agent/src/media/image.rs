//! Image processing (in progress).
