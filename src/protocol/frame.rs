//! Where one RESP2 or RESP3 reply ends in a byte buffer, so a [`super::Connection`] can take
//! whole replies off a small buffer of its own and leave redis-rs to turn each into a
//! [`redis::Value`] ([`redis::parse_redis_value`]).

use redis::{ErrorKind, RedisError};

/// How deep replies may nest. abc-operator's deepest reply (a snapshot: ledgers in a list of
/// lists) nests 3 levels; a server's reply nested thousands of levels deep would overflow the
/// stack of whoever walks it (this and redis-rs' parser), and with it the controller.
pub(super) const MAX_DEPTH: usize = 16;

/// The length of the first whole reply in `buf`, or `None` while it is incomplete.
pub(super) fn reply_len(buf: &[u8]) -> Result<Option<usize>, RedisError> {
    reply_end(buf, 0, 0)
}

fn reply_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, RedisError> {
    if depth > MAX_DEPTH {
        return Err(RedisError::from((
            ErrorKind::Parse,
            "reply refused",
            format!(
                "it nests deeper than {MAX_DEPTH} levels, which no reply abc-operator asks for does"
            ),
        )));
    }
    let Some(line_len) = buf.get(at..).and_then(find_crlf) else {
        return Ok(None);
    };
    let header = &buf[at + 1..at + line_len];
    let after = at + line_len + 2;
    match buf[at] {
        // simple string, error, integer, double, boolean, null, big number
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Ok(Some(after)),
        // bulk string, verbatim string, bulk error: a length, the bytes, CRLF
        b'$' | b'=' | b'!' => match length(header)? {
            None => Ok(Some(after)),
            Some(n) => {
                let end = after + n + 2;
                Ok((buf.len() >= end).then_some(end))
            }
        },
        // array, set, push, map, attribute: a count, then that many replies (two per map entry)
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let count = length(header)?.unwrap_or(0);
            let items = if matches!(kind, b'%' | b'|') {
                2 * count
            } else {
                count
            };
            let mut end = after;
            for _ in 0..items {
                match reply_end(buf, end, depth + 1)? {
                    Some(next) => end = next,
                    None => return Ok(None),
                }
            }
            // an attribute is followed by the reply it annotates
            if kind == b'|' {
                return reply_end(buf, end, depth);
            }
            Ok(Some(end))
        }
        other => Err(not_resp(&format!(
            "a reply starting with byte {other:#04x}"
        ))),
    }
}

/// The length of a line up to its CRLF.
fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

/// A length or count; `None` for RESP2's -1 (null).
fn length(header: &[u8]) -> Result<Option<usize>, RedisError> {
    let text = std::str::from_utf8(header).map_err(|_| not_resp("a length that is not text"))?;
    if text == "-1" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| not_resp(&format!("the length {text:?}")))
}

fn not_resp(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "not a Redis reply",
        format!("{what} is not RESP"),
    ))
}

#[cfg(test)]
mod tests {
    use super::reply_len;

    /// Every prefix of a reply is incomplete; the whole reply is found in front of more bytes.
    fn assert_reply(reply: &[u8]) {
        for cut in 0..reply.len() {
            assert_eq!(
                reply_len(&reply[..cut]).unwrap(),
                None,
                "prefix of {cut} bytes"
            );
        }
        let mut more = reply.to_vec();
        more.extend_from_slice(b"+OK\r\n");
        assert_eq!(reply_len(&more).unwrap(), Some(reply.len()));
        redis::parse_redis_value(reply).expect("redis-rs parses the same reply");
    }

    #[test]
    fn finds_the_end_of_each_kind_of_reply() {
        for reply in [
            &b"+OK\r\n"[..],
            b"-NOSCRIPT No matching script\r\n",
            b":42\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",1.5\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"*3\r\n:1\r\n$1\r\nx\r\n*2\r\n+a\r\n$0\r\n\r\n",
            b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n",
            b"~1\r\n:1\r\n",
            b">3\r\n$7\r\nmessage\r\n$14\r\nabc_msg_pubsub\r\n$5\r\nstart\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ] {
            assert_reply(reply);
        }
    }

    #[test]
    fn refuses_a_reply_nested_deeper_than_any_of_ours() {
        let nested = |depth: usize| [&b"*1\r\n".repeat(depth)[..], b":1\r\n"].concat();
        assert_eq!(
            reply_len(&nested(super::MAX_DEPTH)).unwrap(),
            Some(4 * super::MAX_DEPTH + 4)
        );
        // a million levels: an error, not a stack overflow
        let err = reply_len(&nested(1_000_000)).unwrap_err();
        assert!(
            err.to_string().contains("nests deeper than 16 levels"),
            "{err}"
        );
    }

    #[test]
    fn refuses_what_is_not_resp() {
        assert!(reply_len(b"HTTP/1.1 400 Bad Request\r\n").is_err());
        assert!(reply_len(b"$x\r\n").is_err());
    }
}
