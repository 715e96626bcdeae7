//! A rendered page kept gzip-compressed, with the places where the time of serving goes left
//! open, so that serving it again costs neither a compression nor a copy of the whole page.
//!
//! Why: the operator keeps the last page of each viewed run (about 47 KiB of HTML and SVG,
//! see `server::REUSE_FOR`); compressed it is about a quarter of that, which is also what the
//! TLS connection encrypts. The API server's proxy asks for gzip (Go's HTTP client does
//! unless told otherwise) and compresses for its own client as it sees fit; a browser served
//! by `abc-operator run` is served the page as text.
//!
//! How: each part of the page between two times is compressed on its own into raw deflate
//! blocks that end byte-aligned (a sync flush) and refer to nothing before them; a page is then
//! the gzip header, the parts' blocks with each time between them as a stored (uncompressed)
//! block, the last part's final block, and the CRC-32 and length of the whole text (RFC 1951
//! and 1952: one ordinary gzip member). The CRC-32 is combined from the parts' own.

use super::page::Template;
use flate2::Compression;
use flate2::write::DeflateEncoder;
use k8s_openapi::jiff::Timestamp;
use std::io::{Read, Write};
use std::sync::Arc;

/// A page's compressed parts; the time of serving goes between each two.
#[derive(Clone, Debug)]
pub struct GzipTemplate(Arc<[Part]>);

#[derive(Debug)]
struct Part {
    /// Raw deflate blocks: byte-aligned and not final, except the last part's.
    deflated: Box<[u8]>,
    /// CRC-32 and length of the text.
    crc: u32,
    len: u64,
}

/// gzip's header: magic, deflate, no flags, no time, no extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

impl GzipTemplate {
    pub fn of(template: &Template) -> GzipTemplate {
        let parts = template.parts();
        let last = parts.len().saturating_sub(1);
        GzipTemplate(
            parts
                .iter()
                .enumerate()
                .map(|(i, text)| Part {
                    deflated: deflated(text.as_bytes(), i == last).into(),
                    crc: crc32fast::hash(text.as_bytes()),
                    len: text.len() as u64,
                })
                .collect(),
        )
    }

    /// The page served at `now`, as a gzip file.
    pub fn gzip(&self, now: Timestamp) -> Vec<u8> {
        let time = Template::time_text(now);
        let time = time.as_bytes();
        // a stored block: not final, byte-aligned (the blocks before end so), its length and
        // the length's complement, the bytes
        let len = time.len() as u16;
        let mut stored = vec![0u8];
        stored.extend_from_slice(&len.to_le_bytes());
        stored.extend_from_slice(&(!len).to_le_bytes());
        stored.extend_from_slice(time);
        let size = self.0.iter().map(|p| p.deflated.len()).sum::<usize>()
            + self.0.len() * stored.len()
            + HEADER.len()
            + 8;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&HEADER);
        let mut crc = crc32fast::Hasher::new();
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(&stored);
                crc.update(time);
            }
            out.extend_from_slice(&part.deflated);
            crc.combine(&crc32fast::Hasher::new_with_initial_len(part.crc, part.len));
        }
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE: the length modulo 2^32
        let length = self.0.iter().map(|p| p.len).sum::<u64>()
            + (self.0.len().saturating_sub(1) * time.len()) as u64;
        out.extend_from_slice(&(length as u32).to_le_bytes());
        out
    }

    /// The page served at `now`, as text (for a client that does not accept gzip).
    pub fn fill(&self, now: Timestamp) -> String {
        let mut text = String::new();
        // a file made just above: its decompression cannot fail
        let _ = flate2::read::GzDecoder::new(&self.gzip(now)[..]).read_to_string(&mut text);
        text
    }
}

/// `text` as raw deflate blocks referring to nothing before them: ending byte-aligned with a
/// sync flush, or with the final block when `last`. At the fastest level: a 47 KiB page takes
/// 0.27 ms and 11 KiB, about as long as rendering it (the default level: 0.9 ms and 8 KiB),
/// and a viewed run's page is rendered again at least every `server::REUSE_FOR`.
fn deflated(text: &[u8], last: bool) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
    // writing into a Vec cannot fail
    let _ = encoder.write_all(text);
    if last {
        encoder.finish().unwrap_or_default()
    } else {
        let _ = encoder.flush();
        std::mem::take(encoder.get_mut())
    }
}

/// Whether a request's `Accept-Encoding` accepts gzip (a `q=0` refuses it).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding
        .unwrap_or_default()
        .split(',')
        .filter_map(|coding| {
            let mut params = coding.split(';');
            let name = params.next()?.trim();
            let refused = params.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*").then_some(!refused)
        })
        .any(|accepted| accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(parts: &[&str]) -> Template {
        Template::from_parts(parts)
    }

    fn gunzip(bytes: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .expect("a valid gzip file");
        text
    }

    #[test]
    fn a_compressed_page_opens_as_the_page_served_at_that_time() {
        let now: Timestamp = "2026-12-07T10:16:11Z".parse().unwrap();
        let long = "<svg><path d=\"M0 0 L1 1\"/></svg>\n".repeat(2000);
        for parts in [
            vec!["<html>As of ", &long, " and again ", "</html>\n"],
            vec!["no time at all"],
            vec!["", ""],
        ] {
            let plain = template(&parts);
            let gzipped = GzipTemplate::of(&plain);
            let file = gzipped.gzip(now);
            assert_eq!(gunzip(&file), plain.fill(now));
            assert_eq!(gzipped.fill(now), plain.fill(now));
        }
        // What a browser receives is a fraction of the page.
        let page = template(&["As of ", &long, ""]);
        assert!(GzipTemplate::of(&page).gzip(now).len() * 10 < page.fill(now).len());
    }

    #[test]
    fn gzip_is_accepted_as_browsers_and_proxies_say_it() {
        for yes in [
            "gzip",
            "gzip, deflate, br, zstd",
            "br;q=1.0, gzip;q=0.8",
            "*",
            "GZIP",
        ] {
            assert!(accepts_gzip(Some(yes)), "{yes}");
        }
        for no in ["", "identity", "deflate, br", "gzip;q=0", "gzip; q=0.0, br"] {
            assert!(!accepts_gzip(Some(no)), "{no}");
        }
        assert!(!accepts_gzip(None));
    }
}
