//! Placeholder until the page lands (replaced by the page's own module).
use crate::api::AbcRunStatus;
use crate::protocol::inference::GenerationRecord;

pub struct PageData {
    pub namespace: Option<String>,
    pub name: String,
    pub status: AbcRunStatus,
    pub records: Vec<GenerationRecord>,
    pub gone: bool,
    pub now: k8s_openapi::jiff::Timestamp,
}
#[derive(Default)]
pub struct PageOptions {
    pub parameters: Vec<String>,
    pub refresh_seconds: Option<u32>,
}
pub enum Plot {
    Generations,
    Posterior,
}
pub fn page(data: &PageData, _: &PageOptions) -> String {
    format!("<html><title>{}</title></html>", data.name)
}
pub fn csv(_: &PageData, _: Plot) -> String {
    String::new()
}
