//! Extract a video's audio track as MP3, as MoRAG does: stream copy when the track already is
//! MP3, else encode with libmp3lame at the configured bit rate (128 kbit/s by default).
//!
//! Encoding runs decoder -> filter graph (`abuffer` -> `abuffersink` constrained to the
//! encoder's sample format, rate, layout and frame size) -> libmp3lame -> the `mp3` muxer.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, encoder, filter, format, frame, media, ChannelLayout};

use crate::media::{Cancel, ProcessError};

/// How the MP3 was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mp3Mode {
    /// The source track was MP3: packets copied.
    Copy,
    /// Decoded and encoded with libmp3lame.
    Encode,
}

fn failed(what: &str, e: impl std::fmt::Display) -> ProcessError {
    ProcessError::Failed(format!("audio extraction: {what}: {e}"))
}

const CANCEL_POLL_PACKETS: usize = 64;

/// Write the best audio track of `input` to `out` as MP3.
pub fn extract_mp3(
    input: &Path,
    out: &Path,
    bit_rate: usize,
    cancel: &Cancel,
) -> Result<Mp3Mode, ProcessError> {
    let mut ictx = super::probe::open(input, crate::media::MediaKind::Video)?;
    let ist = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| super::probe::invalid(input, "no audio stream"))?;
    let index = ist.index();
    let in_tb = ist.time_base();
    let params = ist.parameters();
    let mut octx = format::output_as(out, "mp3").map_err(|e| ProcessError::Output {
        path: out.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    if params.id() == codec::Id::MP3 {
        let mut ost = octx
            .add_stream(encoder::find(codec::Id::None))
            .map_err(|e| failed("add stream", e))?;
        ost.set_parameters(params);
        // SAFETY: the stream's codec parameters are live and owned by `octx`; codec_tag 0 lets
        // the muxer pick its own tag.
        unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
        octx.write_header().map_err(|e| failed("write header", e))?;
        let out_tb = octx.stream(0).map(|s| s.time_base()).unwrap_or(in_tb);
        let mut n = 0usize;
        while let Some(mut packet) = super::probe::read_packet(&mut ictx) {
            n += 1;
            if n.is_multiple_of(CANCEL_POLL_PACKETS) && cancel.is_cancelled() {
                return Err(ProcessError::Cancelled);
            }
            if packet.stream() != index {
                continue;
            }
            packet.rescale_ts(in_tb, out_tb);
            packet.set_position(-1);
            packet.set_stream(0);
            packet
                .write_interleaved(&mut octx)
                .map_err(|e| failed("write packet", e))?;
        }
        octx.write_trailer()
            .map_err(|e| failed("write trailer", e))?;
        return Ok(Mp3Mode::Copy);
    }

    let mut decoder = codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().audio())
        .map_err(|e| super::probe::invalid(input, format!("audio stream undecodable: {e}")))?;
    let lame = encoder::find_by_name("libmp3lame")
        .or_else(|| encoder::find(codec::Id::MP3))
        .ok_or_else(|| failed("no MP3 encoder", "FFmpeg was built without libmp3lame"))?
        .audio()
        .map_err(|e| failed("mp3 encoder", e))?;
    let mut ost = octx.add_stream(lame).map_err(|e| failed("add stream", e))?;
    let mut enc = codec::context::Context::from_parameters(ost.parameters())
        .and_then(|c| c.encoder().audio())
        .map_err(|e| failed("encoder context", e))?;
    let in_channels = decoder
        .channel_layout()
        .channels()
        .max(i32::from(decoder.channels()));
    let layout = lame
        .channel_layouts()
        .map(|cls| cls.best(in_channels.max(1)))
        .unwrap_or(ChannelLayout::STEREO);
    let rate = decoder.rate() as i32;
    let supported = lame
        .rates()
        .is_none_or(|mut rates| rates.any(|r| r == rate));
    let rate = if supported { rate } else { 44_100 };
    let sample_format = lame
        .formats()
        .and_then(|mut f| f.next())
        .ok_or_else(|| failed("mp3 encoder", "no sample format"))?;
    enc.set_rate(rate);
    enc.set_channel_layout(layout);
    enc.set_channels(layout.channels());
    enc.set_format(sample_format);
    enc.set_bit_rate(bit_rate);
    enc.set_time_base((1, rate));
    ost.set_time_base((1, rate));
    let mut enc = enc
        .open_as(lame)
        .map_err(|e| failed("open libmp3lame", e))?;
    ost.set_parameters(&enc);
    let mut graph = build_filter(&decoder, in_tb, &enc).map_err(|e| failed("filter graph", e))?;
    octx.write_header().map_err(|e| failed("write header", e))?;
    let out_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or((1, rate).into());
    let tbs = (ffmpeg::Rational(1, rate), out_tb);

    let mut next_pts = 0i64;
    let mut decoded = frame::Audio::empty();
    let mut n = 0usize;
    while let Some(packet) = super::probe::read_packet(&mut ictx) {
        n += 1;
        if n.is_multiple_of(CANCEL_POLL_PACKETS) && cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        if packet.stream() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            continue; // a damaged packet: skip it as ffmpeg does
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            let ts = decoded.timestamp();
            decoded.set_pts(ts);
            feed(&mut graph, &decoded)?;
            pump(&mut graph, &mut enc, &mut octx, tbs, &mut next_pts, false)?;
        }
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        let ts = decoded.timestamp();
        decoded.set_pts(ts);
        feed(&mut graph, &decoded)?;
        pump(&mut graph, &mut enc, &mut octx, tbs, &mut next_pts, false)?;
    }
    graph
        .get("in")
        .ok_or_else(|| failed("filter", "no source"))?
        .source()
        .flush()
        .map_err(|e| failed("filter flush", e))?;
    pump(&mut graph, &mut enc, &mut octx, tbs, &mut next_pts, true)?;
    octx.write_trailer()
        .map_err(|e| failed("write trailer", e))?;
    Ok(Mp3Mode::Encode)
}

/// Move filtered frames into the encoder (timestamps: samples sent so far) and encoded
/// packets into the muxer; with `flush`, drain the encoder too.
fn pump(
    graph: &mut filter::Graph,
    enc: &mut encoder::Audio,
    octx: &mut format::context::Output,
    (enc_tb, out_tb): (ffmpeg::Rational, ffmpeg::Rational),
    next_pts: &mut i64,
    flush: bool,
) -> Result<(), ProcessError> {
    let mut filtered = frame::Audio::empty();
    loop {
        let mut sink = graph
            .get("out")
            .ok_or_else(|| failed("filter", "no sink"))?;
        if sink.sink().frame(&mut filtered).is_err() {
            break;
        }
        filtered.set_pts(Some(*next_pts));
        *next_pts += filtered.samples() as i64;
        enc.send_frame(&filtered).map_err(|e| failed("encode", e))?;
        drain(enc, octx, enc_tb, out_tb)?;
    }
    if flush {
        enc.send_eof().map_err(|e| failed("encode", e))?;
        drain(enc, octx, enc_tb, out_tb)?;
    }
    Ok(())
}

fn feed(graph: &mut filter::Graph, f: &frame::Audio) -> Result<(), ProcessError> {
    graph
        .get("in")
        .ok_or_else(|| failed("filter", "no source"))?
        .source()
        .add(f)
        .map_err(|e| failed("filter", e))
}

fn drain(
    enc: &mut encoder::Audio,
    octx: &mut format::context::Output,
    enc_tb: ffmpeg::Rational,
    out_tb: ffmpeg::Rational,
) -> Result<(), ProcessError> {
    let mut packet = ffmpeg::Packet::empty();
    while enc.receive_packet(&mut packet).is_ok() {
        packet.set_stream(0);
        packet.rescale_ts(enc_tb, out_tb);
        packet
            .write_interleaved(octx)
            .map_err(|e| failed("write packet", e))?;
    }
    Ok(())
}

fn build_filter(
    dec: &codec::decoder::Audio,
    time_base: ffmpeg::Rational,
    enc: &encoder::Audio,
) -> Result<filter::Graph, ffmpeg::Error> {
    let mut graph = filter::Graph::new();
    let layout = if dec.channel_layout().bits() == 0 {
        ChannelLayout::default(i32::from(dec.channels()).max(1))
    } else {
        dec.channel_layout()
    };
    let args = format!(
        "time_base={}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        time_base,
        dec.rate(),
        dec.format().name(),
        layout.bits()
    );
    let abuffer = filter::find("abuffer").ok_or(ffmpeg::Error::FilterNotFound)?;
    let sink = filter::find("abuffersink").ok_or(ffmpeg::Error::FilterNotFound)?;
    graph.add(&abuffer, "in", &args)?;
    graph.add(&sink, "out", "")?;
    {
        let mut out = graph.get("out").ok_or(ffmpeg::Error::FilterNotFound)?;
        out.set_sample_format(enc.format());
        out.set_channel_layout(enc.channel_layout());
        out.set_sample_rate(enc.rate());
    }
    graph.output("in", 0)?.input("out", 0)?.parse("anull")?;
    graph.validate()?;
    if let Some(mut out) = graph.get("out") {
        out.sink().set_frame_size(enc.frame_size());
    }
    Ok(graph)
}
