//! The frame accumulator against hostile byte streams.

use proto::*;

fn frame_of(msg: &Request) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    encode(msg, &mut buf).unwrap().to_vec()
}

fn decoded(msg: &Request) -> Vec<u8> {
    postcard::to_allocvec(msg).unwrap()
}

/// Feeds `stream` in pieces of `step` bytes; returns what came out.
fn read_all<const N: usize>(stream: &[u8], step: usize) -> Vec<Result<Vec<u8>, &'static str>> {
    let mut reader = FrameReader::<N>::new();
    let mut out = Vec::new();
    for piece in stream.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, frame) = reader.push(rest);
            match frame {
                Some(Frame::Message(bytes)) => out.push(Ok(bytes.to_vec())),
                Some(Frame::Oversize) => out.push(Err("oversize")),
                Some(Frame::Corrupt) => out.push(Err("corrupt")),
                None => {}
            }
            rest = &rest[used..];
        }
    }
    out
}

#[test]
fn one_byte_chunks() {
    let msgs =
        [Request::Ping { seq: 1 }, Request::Code { job: 2, data: &[0, 1, 0, 0, 255] }, Request::Shutdown];
    let stream: Vec<u8> = msgs.iter().flat_map(frame_of).collect();
    let want: Vec<_> = msgs.iter().map(|m| Ok(decoded(m))).collect();
    for step in [1, 2, 3, 7, stream.len()] {
        assert_eq!(read_all::<64>(&stream, step), want, "step {step}");
    }
}

#[test]
fn oversize_frame_is_dropped_and_the_next_one_read() {
    let big = vec![7u8; 300];
    let mut stream = frame_of(&Request::Code { job: 1, data: &big });
    stream.extend(frame_of(&Request::Ping { seq: 9 }));
    let want = vec![Err("oversize"), Ok(decoded(&Request::Ping { seq: 9 }))];
    for step in [1, 64, stream.len()] {
        assert_eq!(read_all::<128>(&stream, step), want, "step {step}");
    }
}

#[test]
fn garbage_between_frames() {
    let ping = frame_of(&Request::Ping { seq: 3 });
    let mut stream = vec![0, 0, 0];
    stream.extend(&ping);
    // Not valid COBS: the first code byte points past the delimiter.
    stream.extend([0x09, 0x41, 0x42, 0x00]);
    stream.extend([0x00, 0x00]);
    stream.extend(&ping);
    let ping = decoded(&Request::Ping { seq: 3 });
    assert_eq!(read_all::<64>(&stream, 1), vec![Ok(ping.clone()), Err("corrupt"), Ok(ping)]);
}

#[test]
fn valid_cobs_that_is_not_a_message_fails_to_decode() {
    let got = read_all::<64>(&[0x03, 0x63, 0x09, 0x00], 1);
    let Ok(bytes) = &got[0] else { panic!("{got:?}") };
    assert!(postcard::from_bytes::<Request>(bytes).is_err());
}
