//! `weft bench`: the in-process data pipeline (frame -> seal -> open ->
//! unframe) over batches, per cipher, so operators can size hosts. No
//! sockets, no devices: just what one core does per packet.

use crate::noise::handshake::DataKeys;
use crate::noise::{CipherKind, Session};
use crate::wire::sleeve::{self, MessageType, Records};
use clap::Args;
use rayon::prelude::*;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `weft bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Inner packet sizes to measure (bytes): `--sizes 64,1400`,
    /// `--sizes "64 1400"` or `--sizes 64 1400`.
    #[arg(long, num_args = 1.., value_parser = parse_sizes, default_value = "64,1400,8900")]
    sizes: Vec<SizeList>,
    /// Packets per batch (what one event-loop wakeup handles).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Seconds to measure each case.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
}

/// The sizes of one `--sizes` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(Vec<usize>);

/// Parses one `--sizes` argument: numbers separated by commas and/or spaces.
fn parse_sizes(text: &str) -> Result<SizeList, String> {
    let sizes = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| format!("{t:?} is not a packet size in bytes (e.g. 64,1400,8900)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.is_empty() {
        return Err("no sizes given; e.g. --sizes 64,1400,8900".into());
    }
    Ok(SizeList(sizes))
}

impl BenchArgs {
    /// The sizes to measure, in the order given.
    pub fn sizes(&self) -> Vec<usize> {
        self.sizes
            .iter()
            .flat_map(|l| l.0.iter().copied())
            .collect()
    }
}

/// One measured case.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// The cipher.
    pub cipher: CipherKind,
    /// Inner packet size.
    pub size: usize,
    /// Worker threads used (1 = the event loop's own core).
    pub threads: usize,
    /// Packets through the whole pipeline per second.
    pub packets_per_sec: f64,
}

impl BenchResult {
    /// Inner bits per second.
    pub fn gbit_per_sec(&self) -> f64 {
        self.packets_per_sec * self.size as f64 * 8.0 / 1e9
    }
}

fn session_pair(cipher: CipherKind) -> (Session, Session) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut a).expect("random");
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    let now = Instant::now();
    (
        Session::new(cipher, &DataKeys { send: a, recv: b }, 1, 2, now),
        Session::new(cipher, &DataKeys { send: b, recv: a }, 2, 1, now),
    )
}

/// Frames, seals, opens and unframes one packet in `buf` (reused). Returns
/// the inner length seen at the far end (0 on failure, which the caller
/// treats as a bug).
#[inline]
pub fn pipeline_once(tx: &Session, rx: &Session, buf: &mut [u8], size: usize, vni: u32) -> usize {
    // The packet is already in place after the sleeve and record headers,
    // as a TUN read puts it.
    let Some(record_len) = sleeve::emit_record_header(&mut buf[sleeve::HEADER_LEN..], vni, size)
    else {
        return 0;
    };
    let Ok(len) = tx.seal(MessageType::Data, buf, record_len) else {
        return 0;
    };
    let Ok(packet) = sleeve::Packet::new_checked(&buf[..len]) else {
        return 0;
    };
    let counter = packet.counter();
    let Ok(plain) = rx.open(counter, &mut buf[..len]) else {
        return 0;
    };
    let mut seen = 0;
    for record in Records::new(&buf[sleeve::HEADER_LEN..sleeve::HEADER_LEN + plain]) {
        match record {
            Ok(r) if r.vni == vni => seen += r.frame.len(),
            _ => return 0,
        }
    }
    seen
}

/// Measures one case.
pub fn measure(
    cipher: CipherKind,
    size: usize,
    batch: usize,
    threads: usize,
    duration: Duration,
) -> BenchResult {
    let (tx, rx) = session_pair(cipher);
    let slot = sleeve::HEADER_LEN + sleeve::RECORD_OVERHEAD + size + sleeve::TAG_LEN;
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| vec![0xa5u8; slot]).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let start = Instant::now();
    let mut packets = 0u64;
    while start.elapsed() < duration {
        let ok: usize = if threads == 1 {
            bufs.iter_mut()
                .map(|b| usize::from(pipeline_once(&tx, &rx, b, size, 7) == size))
                .sum()
        } else {
            pool.install(|| {
                bufs.par_iter_mut()
                    .map(|b| usize::from(pipeline_once(&tx, &rx, b, size, 7) == size))
                    .sum()
            })
        };
        // Parallel sealing reorders counters; a few may fall outside the
        // replay window only if batches were huge. Count what got through.
        packets += ok as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    BenchResult {
        cipher,
        size,
        threads,
        packets_per_sec: packets as f64 / secs,
    }
}

/// Runs `weft bench`.
pub fn run(args: &BenchArgs) -> ExitCode {
    let sizes = args.sizes();
    if args.batch == 0
        || sizes.iter().any(|s| *s == 0 || *s > 65000)
        || args.seconds.is_nan()
        || args.seconds <= 0.0
    {
        eprintln!("weft bench: --batch must be > 0, --sizes between 1 and 65000, --seconds > 0");
        return ExitCode::from(2);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "weft bench: frame -> seal -> open -> unframe, batches of {}, {:.1} s per case",
        args.batch, args.seconds
    );
    println!(
        "{:<18} {:>6} {:>8} {:>14} {:>10}",
        "cipher", "bytes", "threads", "packets/s", "Gbit/s"
    );
    for cipher in [CipherKind::ChaChaPoly, CipherKind::AesGcm] {
        for &size in &sizes {
            let mut thread_counts = vec![1];
            if cores > 1 {
                thread_counts.push(cores);
            }
            for threads in thread_counts {
                let r = measure(cipher, size, args.batch, threads, duration);
                println!(
                    "{:<18} {:>6} {:>8} {:>14.0} {:>10.2}",
                    cipher.name(),
                    size,
                    threads,
                    r.packets_per_sec,
                    r.gbit_per_sec()
                );
            }
        }
    }
    println!(
        "Per-core figures are the 1-thread rows; each packet is both sealed and opened, so a host"
    );
    println!("doing only one direction moves about twice this. The rayon rows show what spreading a batch");
    println!("over every core would give when the cores have nothing else to do.");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_commas_and_spaces() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
                .map(|c| c.args.sizes())
        };
        assert_eq!(parse(&[]).unwrap(), vec![64, 1400, 8900]);
        assert_eq!(parse(&["--sizes", "64,1400"]).unwrap(), vec![64, 1400]);
        assert_eq!(
            parse(&["--sizes", "64 1400, 9000"]).unwrap(),
            vec![64, 1400, 9000]
        );
        assert_eq!(parse(&["--sizes", "64", "1400"]).unwrap(), vec![64, 1400]);
        assert!(parse(&["--sizes", "64,x"]).is_err());
    }

    #[test]
    fn pipeline_delivers_the_packet() {
        for cipher in [CipherKind::ChaChaPoly, CipherKind::AesGcm] {
            let (tx, rx) = session_pair(cipher);
            let mut buf = vec![0u8; 2000];
            assert_eq!(pipeline_once(&tx, &rx, &mut buf, 1400, 3), 1400);
        }
    }

    #[test]
    fn measure_counts_packets() {
        let r = measure(CipherKind::AesGcm, 100, 8, 1, Duration::from_millis(20));
        assert!(r.packets_per_sec > 0.0);
    }
}
