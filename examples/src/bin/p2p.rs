//! Two peers on loopback: `alice` listens, `bob` dials. They keep a session with fast
//! heartbeats and ask each other questions with a user-defined serde message type.
//!
//! Run: `cargo run -p morag-examples --bin p2p`

use std::time::Duration;

use anyhow::{bail, Context};
use morag_examples::{agent_name, fast_heartbeat, init_tracing, Log, Pki};
use morag_transport::{close_code, Client, Envelope, Inbound, Listener, Session};
use serde::{Deserialize, Serialize};

/// The application's own messages, sent as `Body::User` under these kinds.
const QUESTION: &str = "p2p.question";
const ANSWER: &str = "p2p.answer";

#[derive(Debug, Serialize, Deserialize)]
struct Question {
    from: String,
    text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    by: String,
    text: String,
    words_in_question: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let log = Log::new();
    let pki = Pki::new()?;
    let mut alice_cfg = pki.agent("alice")?;
    let mut bob_cfg = pki.agent("bob")?;
    alice_cfg.heartbeat = fast_heartbeat();
    bob_cfg.heartbeat = fast_heartbeat();

    let listener = Listener::bind("127.0.0.1:0".parse()?, alice_cfg).context("alice: bind")?;
    let addr = listener.local_addr()?;
    log.line("alice", format!("listening on {addr}"));

    let bob_client = Client::new(bob_cfg).context("bob: client")?;
    let alice_name = agent_name("alice");
    let (bob, alice) = tokio::join!(bob_client.connect(addr, &alice_name), listener.accept());
    let bob = bob.context("bob: connect")?;
    let alice = alice.context("alice: listener closed")?;
    log.line(
        "bob",
        format!("connected to {} (0-RTT: {})", bob.peer_id(), bob.zero_rtt()),
    );
    log.line("alice", format!("accepted {}", alice.peer_id()));

    // Each side answers the other's questions in the background.
    let alice_answers = tokio::spawn(answer_questions(alice.clone(), "alice", log));
    let bob_answers = tokio::spawn(answer_questions(bob.clone(), "bob", log));

    ask(
        &bob,
        "bob",
        "alice",
        "how many heartbeats fit in a second?",
        log,
    )
    .await?;
    ask(
        &alice,
        "alice",
        "bob",
        "is the link healthy on your side?",
        log,
    )
    .await?;

    // Let heartbeats run for a while (every 50 ms), then report what each side measured.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (who, s) in [("bob", &bob), ("alice", &alice)] {
        let rtts = s.heartbeat_rtts();
        if rtts.is_empty() {
            bail!("{who}: no heartbeat round trip measured");
        }
        let mut sorted = rtts.clone();
        sorted.sort();
        let status = s.status();
        log.line(
            who,
            format!(
                "heartbeat rtt: {} samples, min {:?}, median {:?}, max {:?}",
                sorted.len(),
                sorted[0],
                sorted[sorted.len() / 2],
                sorted[sorted.len() - 1]
            ),
        );
        log.line(
            who,
            format!(
                "connection status: connected={} quality={:.2} latency_ms={:.3} loss={:.2} reconnects={}",
                status.connected,
                status.quality,
                status.latency_ms.unwrap_or(f32::NAN),
                status.loss,
                status.reconnect_attempts
            ),
        );
        if !status.connected {
            bail!("{who}: not connected");
        }
    }

    bob.close(close_code::NORMAL, "done").await;
    log.line("bob", "closed the session");
    // Alice's receive loop ends once the session is closed.
    tokio::time::timeout(Duration::from_secs(5), alice_answers)
        .await
        .context("alice did not see the close")???;
    bob_answers.await??;
    listener.close(close_code::NORMAL, "done").await;
    bob_client.close().await;
    log.line("p2p", "ok");
    Ok(())
}

/// Send a question and print the typed answer.
async fn ask(session: &Session, me: &str, peer: &str, text: &str, log: Log) -> anyhow::Result<()> {
    let question = Question {
        from: me.into(),
        text: text.into(),
    };
    log.line(me, format!("asks {peer}: {text:?}"));
    let reply = session
        .request(Envelope::user(QUESTION, &question)?)
        .await
        .with_context(|| format!("{me}: request to {peer}"))?;
    let answer: Answer = reply
        .decode_user(ANSWER)
        .context("reply is not an answer")?
        .context("decode answer")?;
    log.line(
        me,
        format!(
            "{} answered: {:?} ({} words in the question)",
            answer.by, answer.text, answer.words_in_question
        ),
    );
    Ok(())
}

/// Answer every question until the session closes.
async fn answer_questions(session: Session, me: &'static str, log: Log) -> anyhow::Result<()> {
    while let Some(inbound) = session.recv().await {
        let Inbound::Message(env) = inbound else {
            continue;
        };
        let Some(question) = env.decode_user::<Question>(QUESTION) else {
            log.line(me, format!("ignoring a {} message", env.body.kind()));
            continue;
        };
        let question = question.context("decode question")?;
        let answer = Answer {
            by: me.into(),
            text: format!("hello {}, all good here", question.from),
            words_in_question: question.text.split_whitespace().count() as u32,
        };
        session.respond(&env, Envelope::user(ANSWER, &answer)?.body)?;
    }
    Ok(())
}
