//! A fake Redis that answers hostilely: with `spec.redis.external` the server belongs to
//! whoever holds its password, on a shared cluster possibly another tenant. It speaks RESP just
//! well enough to be connected to (any password), then answers every other command as its
//! [`Hostile`] says.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake server does with every command after the handshake.
#[derive(Clone, Copy, Debug)]
pub enum Hostile {
    /// An array nested a million levels deep.
    Deep,
    /// A bulk string announced at 100 GB, then bytes for as long as they are read.
    Huge,
    /// An integer where a snapshot's array belongs.
    WrongType,
    /// A snapshot-shaped array of junk: a malformed ledger.
    Malformed,
    /// The reply, 15 s late.
    Slow,
    /// No reply at all.
    Never,
    /// Deep, Huge and Never in turn, one per connection (each failed read drops its
    /// connection, so a reader meets each of them).
    Rotating,
}

/// The fake server's port; it serves every connection as `hostile` says.
pub async fn fake_redis(hostile: Hostile) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let rotation = [Hostile::Deep, Hostile::Huge, Hostile::Never];
        let mut accepted = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let this = match hostile {
                Hostile::Rotating => rotation[accepted % rotation.len()],
                other => other,
            };
            accepted += 1;
            tokio::spawn(serve(stream, this));
        }
    });
    port
}

async fn serve(mut stream: TcpStream, hostile: Hostile) {
    let mut buf = Vec::new();
    while let Some(command) = next_command(&mut stream, &mut buf).await {
        let reply: Vec<u8> = match command.first().map(|c| c.to_ascii_uppercase()).as_deref() {
            // the handshake succeeds: RESP3, any password
            Some(b"HELLO") => b"%1\r\n+server\r\n+redis\r\n".to_vec(),
            Some(b"AUTH" | b"PING" | b"CLIENT" | b"SUBSCRIBE") => b"+OK\r\n".to_vec(),
            _ => match hostile {
                Hostile::Deep => [&b"*1\r\n".repeat(1_000_000)[..], b":1\r\n"].concat(),
                Hostile::Huge => {
                    let _ = stream.write_all(b"$100000000000\r\n").await;
                    let chunk = vec![b'x'; 1 << 20];
                    // bounded: 1 GiB at most, should the reader never stop
                    for _ in 0..1024 {
                        if stream.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Hostile::WrongType => b":42\r\n".to_vec(),
                Hostile::Malformed => b"*3\r\n$3\r\nabc\r\n*1\r\n_\r\n:-1\r\n".to_vec(),
                Hostile::Slow => {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    b":42\r\n".to_vec()
                }
                Hostile::Never => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                Hostile::Rotating => unreachable!("fake_redis serves one kind per connection"),
            },
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The next command (a RESP array of bulk strings) from `stream`, its arguments; None when the
/// client is gone.
async fn next_command(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<Vec<u8>>> {
    loop {
        if let Some((args, used)) = parse_command(buf) {
            buf.drain(..used);
            return Some(args);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    };
    let (header, mut at) = line(0)?;
    let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (header, after) = line(at)?;
        let len: usize = std::str::from_utf8(header.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < after + len + 2 {
            return None;
        }
        args.push(buf[after..after + len].to_vec());
        at = after + len + 2;
    }
    Some((args, at))
}
