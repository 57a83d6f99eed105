//! tmp
/// tmp
#[derive(Debug)]
pub struct JsonError;
