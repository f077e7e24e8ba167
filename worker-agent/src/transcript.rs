//! A transcript's segments, as Whisper makes them and speakers and topics fill them in; MoRAG's
//! segment shape (`crate::media::morag` writes the rest of its result).

use serde::{Deserialize, Serialize};

/// One transcribed stretch of speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    /// Whisper's text for the segment (usually with a leading space, as faster-whisper's).
    pub text: String,
    /// Speaker label; `None` (null) without diarization.
    pub speaker: Option<String>,
    /// Average log-probability of the segment's text tokens (<= 0).
    pub confidence: f64,
    pub topic_id: Option<i64>,
    pub topic_label: Option<String>,
    /// Whisper's tokens with their times, when asked for (to split a segment where the speaker
    /// changes); not part of MoRAG's output.
    #[serde(skip)]
    pub tokens: Vec<TimedToken>,
}

/// One text token of a segment and when it was said (whisper.cpp's token timestamps).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimedToken {
    pub start: f64,
    pub end: f64,
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
}
