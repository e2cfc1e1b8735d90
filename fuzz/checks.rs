// The properties the fuzz targets check, shared with the stable test that
// replays their corpus (`proto/tests/fuzz_corpus.rs` includes this file).

use proto::{Frame, FrameReader, Request};

/// Frames held by the reader under test: small, so that oversize frames
/// are common.
const HELD: usize = 64;

/// Whatever bytes arrive, in whatever pieces, the frame reader yields what
/// splitting the whole stream at each 0x00 yields: each piece longer than
/// it holds is `Oversize`, each other non-empty piece its COBS decoding
/// or `Corrupt`; every decoded message is then decoded as a request
/// without a panic. The first byte chooses the piece size.
pub fn frames(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece % 16) + 1;
    let mut reader = FrameReader::<HELD>::new();
    let mut got: Vec<Result<Vec<u8>, &str>> = Vec::new();
    for chunk in stream.chunks(piece) {
        let mut input = chunk;
        while !input.is_empty() {
            let (used, frame) = reader.push(input);
            assert!(used > 0 && used <= input.len(), "push took {used} of {}", input.len());
            input = &input[used..];
            match frame {
                Some(Frame::Message(bytes)) => {
                    assert!(bytes.len() <= HELD);
                    let _ = proto::decode::<Request<'_>>(bytes);
                    got.push(Ok(bytes.to_vec()));
                }
                Some(Frame::Oversize) => got.push(Err("oversize")),
                Some(Frame::Corrupt) => got.push(Err("corrupt")),
                None => {}
            }
        }
    }
    let mut want: Vec<Result<Vec<u8>, &str>> = Vec::new();
    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == 0).collect();
    // The bytes after the last delimiter are not a frame yet.
    pieces.pop();
    for encoded in pieces.into_iter().filter(|p| !p.is_empty()) {
        if encoded.len() > HELD {
            want.push(Err("oversize"));
            continue;
        }
        let mut buf = encoded.to_vec();
        match cobs::decode_in_place(&mut buf) {
            Ok(n) => want.push(Ok(buf[..n].to_vec())),
            Err(_) => want.push(Err("corrupt")),
        }
    }
    assert_eq!(got, want);
}

/// The init's decoder agrees with postcard on every input: the same
/// request, or an error from both. A frame's bytes that decode as a
/// request encode back to the same request.
pub fn requests(data: &[u8]) {
    let decoded = proto::decode::<Request<'_>>(data);
    assert_eq!(proto::wire::decode_request(data).ok(), decoded.clone().ok(), "the init decodes {data:02x?} otherwise");
    let Ok(request) = decoded else { return };
    let bytes = postcard::to_stdvec(&request).expect("a decoded request encodes");
    let again: Request<'_> = postcard::from_bytes(&bytes).expect("its encoding decodes");
    assert_eq!(again, request);
}
