pub mod bench;
pub mod embed;
pub mod eval;
pub mod index;
pub mod model;
pub mod sample;
pub mod tokenizer;
pub mod train;
