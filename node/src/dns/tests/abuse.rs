//! What clients that misbehave, or just ask a lot, get: malformed packets, floods, answers too
//! large for UDP, TCP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// A header: id, flags, then the four counts.
fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

#[tokio::test]
async fn malformed_packets_are_counted_and_the_server_keeps_answering() {
    let running = start(table(&web_entries())).await;
    let socket = client().await;
    let server = running.addr();
    // Unreadable headers get no answer at all.
    let mut noise = 0x9e37_79b9_u32;
    let random: Vec<u8> = (0..11)
        .map(|_| {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            noise as u8
        })
        .collect();
    for unreadable in [&b""[..], &b"\x12\x34\x01"[..], &random[..]] {
        assert_eq!(exchange(&socket, server, unreadable).await, None);
    }
    // A readable header with a question that is not one: FORMERR, same id.
    let mut garbage = header(0xbeef, 0x0100, [1, 0, 0, 0]);
    garbage.extend_from_slice(b"\x3fnot-really-a-label\xff\xff");
    // A compression pointer to itself.
    let mut looping = header(0xcafe, 0x0100, [1, 0, 0, 0]);
    looping.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
    // The header claims every question there could be.
    let mut many = header(0xf00d, 0x0100, [u16::MAX, 0, 0, 0]);
    many.extend_from_slice(&[0u8; 64]);
    for (id, packet) in [(0xbeef, garbage), (0xcafe, looping), (0xf00d, many)] {
        let bytes = exchange(&socket, server, &packet).await.expect("FORMERR");
        let answer = Message::from_vec(&bytes).expect("the FORMERR decodes");
        assert_eq!(answer.metadata.id, id);
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    }
    // A response sent to the server is never answered (no ping-pong between servers).
    let mut response = query("web.svc.starling.", RecordType::A, None);
    response.metadata.message_type = MessageType::Response;
    let bytes = response.to_vec().expect("encode");
    assert_eq!(exchange(&socket, server, &bytes).await, None);
    assert_eq!(
        running.counters.malformed.load(Ordering::Relaxed),
        3 + 3 + 1
    );
    // Another opcode: NOTIMP.
    let bytes = exchange(&socket, server, &header(7, 0x2800, [0, 0, 0, 0])).await;
    let answer = Message::from_vec(&bytes.expect("NOTIMP")).expect("decodes");
    assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
    // And the server still answers.
    let answer = ask(server, "web.svc.starling.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_is_rate_limited_and_others_still_get_answers() {
    let qps = 100;
    let running = start_with(vec![ServiceAnswer::ServiceAddress], qps, table(&[])).await;
    let server = running.addr();
    let flooder = client().await;
    let bytes = query("web.svc.starling.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    let began = crate::clock::monotonic();
    for n in 0..2000 {
        flooder.send_to(&bytes, server).await.expect("send");
        // Let the server keep up, so the kernel drops nothing and every query is counted.
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Another client (127.0.0.2 is loopback too) has a bucket of its own, full while the
    // flooder's is empty.
    let other = UdpSocket::bind("127.0.0.2:0").await.expect("second client");
    let message = query("web.svc.starling.", RecordType::A, None);
    let answer = exchange(&other, server, &message.to_vec().expect("encode")).await;
    assert!(answer.is_some(), "a second client is answered");
    let elapsed_s = began.elapsed().as_secs_f64();
    let mut answers = 0u64;
    let mut buffer = [0u8; 512];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(200), flooder.recv(&mut buffer)).await
    {
        answers += 1;
    }
    let c = &running.counters;
    let limited = c.rate_limited.load(Ordering::Relaxed);
    let allowed = 2.0 * f64::from(qps) + f64::from(qps) * elapsed_s + 1.0;
    assert!(limited >= 1000, "{limited} rate limited");
    assert!(
        answers as f64 <= allowed,
        "{answers} answered in {elapsed_s:.2} s"
    );
    assert_eq!(
        c.queries.load(Ordering::Relaxed),
        c.answered.load(Ordering::Relaxed) + limited,
        "every query is either answered or counted as rate limited"
    );
    // Once its bucket refills a little, the flooder is answered again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(&flooder, server, &bytes).await;
    assert!(answer.is_some(), "the flooder is answered after the flood");
}

/// `web` with `n` ready http instances on distinct nodes.
fn many_instances(n: u32) -> Arc<ServiceTable> {
    let entries: Vec<String> = (0..n)
        .map(|i| {
            let address = format!("10.0.{}.{}:{}", i / 200, i % 200 + 1, 30000 + i);
            entry("web", i, "http", &address, EndpointState::Ready)
        })
        .collect();
    table(&entries)
}

#[tokio::test]
async fn answers_too_large_for_udp_are_truncated_and_whole_over_tcp() {
    let running = start(many_instances(25)).await;
    let name = "_http._tcp.web.svc.starling.";
    // Without EDNS: 512 bytes, so the question alone with TC.
    let answer = ask(running.addr(), name, RecordType::SRV).await;
    assert!(answer.metadata.truncation, "TC is set");
    assert!(answer.answers.is_empty());
    assert_eq!(running.counters.truncated.load(Ordering::Relaxed), 1);
    // With EDNS the SRV records fit (40 bytes each: targets are not compressed); their
    // targets' addresses (optional) do not.
    let answer = ask_with(running.addr(), query(name, RecordType::SRV, Some(4096))).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 25);
    assert!(answer.additionals.is_empty());
    let edns = answer.edns.expect("EDNS is answered with EDNS");
    assert_eq!(edns.max_payload(), UDP_PAYLOAD_BYTES_MAX);
    // Over TCP, the whole answer.
    let mut stream = TcpStream::connect(running.addr()).await.expect("connect");
    let message = query(name, RecordType::SRV, None);
    let answer = tcp_exchange(&mut stream, &message).await;
    assert_eq!(answer.metadata.id, message.metadata.id);
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 25);
    assert_eq!(answer.additionals.len(), 25);
}

async fn tcp_exchange(stream: &mut TcpStream, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode");
    let len = u16::try_from(bytes.len()).expect("small");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(&bytes).await.expect("write");
    let mut prefix = [0u8; 2];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut prefix));
    read.await.expect("an answer in time").expect("read");
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut answer).await.expect("read");
    Message::from_vec(&answer).expect("the answer decodes")
}

#[tokio::test]
async fn tcp_answers_several_queries_on_one_connection() {
    let table = table(&web_entries());
    let running = start(table.clone()).await;
    let mut stream = TcpStream::connect(running.addr()).await.expect("connect");
    let answer = tcp_exchange(
        &mut stream,
        &query("web.svc.starling.", RecordType::A, None),
    )
    .await;
    assert_eq!(
        addresses(&answer.answers),
        [IpAddr::V4(web_address(&table))]
    );
    let answer = tcp_exchange(
        &mut stream,
        &query("nope.svc.starling.", RecordType::A, None),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    // A message that is not DNS gets FORMERR or nothing, and the connection goes on.
    stream.write_all(b"\x00\x03abc").await.expect("write");
    let answer = tcp_exchange(
        &mut stream,
        &query("web.svc.starling.", RecordType::A, None),
    )
    .await;
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(running.counters.malformed.load(Ordering::Relaxed), 1);
}
