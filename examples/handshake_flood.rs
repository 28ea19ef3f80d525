//! A bounded flood of control-handshake first messages, for perf/handshake-flood
//! and tests/handshake.rs: each message 1 on a new TCP connection.
//!
//!     handshake_flood --target 198.18.0.2:6783 --rate 1000 --seconds 10 \
//!         (--secret-file FILE | --replay FILE) [--bind IP] [--hold-ms 500]
//!
//! `--secret-file`: fresh, authentic messages (a new ephemeral key and the
//! current timestamp each): the worst case, an insider who knows the network
//! secret, since each passes the freshness and replay checks and only the
//! rate limits stand before the responder's Diffie-Hellman work.
//! `--replay`: the same captured frame (length prefix included) every time.
//!
//! Each connection is held open `--hold-ms` (so the responder sees a live
//! initiator waiting for message 2), then closed after a non-blocking read
//! that records whether any byte came back. Prints one line of counts.
//!
//! Safety: the target must be loopback or in 198.18.0.0/15 (the benchmark
//! underlay); at most 60 s and 100 000 connections.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft::mesh::admission::Timestamp;
use weft::mesh::control::push_frame;
use weft::noise::{Handshake, NetworkSecret, StaticKey};

const MAX_SECONDS: u64 = 60;
const MAX_CONNECTIONS: u64 = 100_000;

struct Args {
    target: SocketAddr,
    rate: u64,
    seconds: u64,
    secret_file: Option<PathBuf>,
    replay: Option<PathBuf>,
    bind: Option<IpAddr>,
    hold: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut target, mut rate, mut seconds) = (None, 1000, 10);
    let (mut secret_file, mut replay, mut bind, mut hold_ms) = (None, None, None, 500u64);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => target = Some(value()?.parse().map_err(|e| format!("--target: {e}"))?),
            "--rate" => rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--secret-file" => secret_file = Some(PathBuf::from(value()?)),
            "--replay" => replay = Some(PathBuf::from(value()?)),
            "--bind" => bind = Some(value()?.parse().map_err(|e| format!("--bind: {e}"))?),
            "--hold-ms" => hold_ms = value()?.parse().map_err(|e| format!("--hold-ms: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let target: SocketAddr = target.ok_or("--target IP:PORT is required")?;
    let allowed = match target.ip() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || (v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !allowed {
        return Err(format!("{target}: only loopback or 198.18.0.0/15 targets"));
    }
    if seconds == 0 || seconds > MAX_SECONDS || rate == 0 || rate * seconds > MAX_CONNECTIONS {
        return Err(format!(
            "at most {MAX_SECONDS} s and {MAX_CONNECTIONS} connections in all"
        ));
    }
    if secret_file.is_some() == replay.is_some() {
        return Err("give exactly one of --secret-file and --replay".into());
    }
    Ok(Args {
        target,
        rate,
        seconds,
        secret_file,
        replay,
        bind,
        hold: Duration::from_millis(hold_ms.min(10_000)),
    })
}

fn connect(args: &Args) -> std::io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(args.target);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if let Some(ip) = args.bind {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&args.target.into(), Duration::from_secs(1))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether any byte came back on a held connection (message 2).
fn answered(mut stream: TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut b = [0u8; 512];
    matches!(stream.read(&mut b), Ok(n) if n > 0)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("handshake_flood: {e}");
            std::process::exit(2);
        }
    };
    let replayed = args.replay.as_ref().map(|p| {
        std::fs::read(p).unwrap_or_else(|e| {
            eprintln!("handshake_flood: cannot read {}: {e}", p.display());
            std::process::exit(2)
        })
    });
    let fresh = args.secret_file.as_ref().map(|p| {
        let secret = NetworkSecret::from_file(p).unwrap_or_else(|e| {
            eprintln!("handshake_flood: {e}");
            std::process::exit(2)
        });
        (StaticKey::generate(), secret)
    });
    let message = || -> Vec<u8> {
        if let Some(bytes) = &replayed {
            return bytes.clone();
        }
        let (key, secret) = fresh.as_ref().expect("one of the two");
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let body = Handshake::initiator(key, secret)
            .and_then(|mut hs| hs.write(Timestamp::from_wall(wall).as_bytes()))
            .expect("a handshake message");
        let mut frame = Vec::with_capacity(body.len() + 2);
        push_frame(&mut frame, &body);
        frame
    };

    let total = args.rate * args.seconds;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds) + Duration::from_secs(5);
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let (mut sent, mut connect_errors, mut write_errors, mut answers) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..total {
        let due = started + Duration::from_micros(i * 1_000_000 / args.rate);
        let now = Instant::now();
        if now > deadline {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        while held.front().is_some_and(|(t, _)| t.elapsed() >= args.hold) {
            let (_, s) = held.pop_front().expect("checked");
            answers += u64::from(answered(s));
        }
        let frame = message();
        match connect(&args) {
            Ok(mut s) => {
                if s.write_all(&frame).is_ok() {
                    sent += 1;
                    held.push_back((Instant::now(), s));
                } else {
                    write_errors += 1;
                }
            }
            Err(_) => connect_errors += 1,
        }
    }
    std::thread::sleep(args.hold.min(Duration::from_secs(1)));
    for (_, s) in held {
        answers += u64::from(answered(s));
    }
    println!(
        "sent={sent} connect_errors={connect_errors} write_errors={write_errors} answered={answers} seconds={:.1} flooder_cpu_s={:.2}",
        started.elapsed().as_secs_f64(),
        cpu_seconds()
    );
}

/// User plus system CPU time this process used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage the call may write.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
