//! OCR CPU steps (being written).
