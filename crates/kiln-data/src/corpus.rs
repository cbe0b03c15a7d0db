//! Built-in corpora: three generated domains with real structure, available offline on any
//! machine and free of licence questions (kiln generates them; they are MIT OR Apache-2.0 like
//! the code).
//!
//! - [`Domain::Prose`]: English-like paragraphs from a grammar with topics — determiners and
//!   verbs agree with their nouns in number, pronouns agree with the previous subject, relative
//!   clauses and prepositional phrases nest, and each paragraph stays on one topic (farm, sea,
//!   city, forest, school), so both syntax and co-occurrence can be learned.
//! - [`Domain::Code`]: Python functions from templates (accumulate, filter, count, search,
//!   transform, clamp) with consistent variable use and indentation.
//! - [`Domain::Arithmetic`]: lines of correct sums, differences and products (`37 + 48 = 85`).
//!
//! Document `i` of a domain depends only on `(seed, domain, i)`, so a held-out split is the same
//! generator at other indices or another seed, and corpora of different sizes share prefixes.
//! [`acceptability`] derives a CoLA-like probe from the prose grammar: single sentences, half of
//! them made ungrammatical by a number-agreement error.

use std::fmt::Write;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A built-in domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// English-like paragraphs.
    Prose,
    /// Python functions.
    Code,
    /// Arithmetic facts.
    Arithmetic,
}

impl Domain {
    /// Every built-in domain.
    pub const ALL: [Domain; 3] = [Domain::Prose, Domain::Code, Domain::Arithmetic];

    /// The domain's name (`prose`, `code`, `arithmetic`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Prose => "prose",
            Self::Code => "code",
            Self::Arithmetic => "arithmetic",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| Error::Config {
            message: format!("unknown built-in domain `{name}`; the built-in domains are prose, code and arithmetic"),
        })
    }

    fn id(self) -> u64 {
        match self {
            Self::Prose => 1,
            Self::Code => 2,
            Self::Arithmetic => 3,
        }
    }
}

/// Document `index` of `domain` for `seed`.
pub fn document(domain: Domain, seed: u64, index: u64) -> String {
    let mut g = Gen::new(seed, domain.id(), index);
    match domain {
        Domain::Prose => g.paragraph(),
        Domain::Code => g.code_file(),
        Domain::Arithmetic => g.arithmetic(),
    }
}

/// Documents `start..start + n` of `domain` for `seed`.
pub fn documents(domain: Domain, seed: u64, start: u64, n: u64) -> Vec<String> {
    (start..start + n)
        .map(|i| document(domain, seed, i))
        .collect()
}

/// One example of the acceptability probe: a sentence and whether it is grammatical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// The sentence.
    pub text: String,
    /// `true` for grammatical.
    pub acceptable: bool,
}

/// Examples `start..start + n` of a CoLA-like probe: sentences of the prose grammar, half of them
/// (chosen at random) broken by a number-agreement error between subject and verb or between
/// determiner and noun. Telling them apart needs syntax, not topic.
pub fn acceptability(seed: u64, start: u64, n: u64) -> Vec<Judgement> {
    (start..start + n)
        .map(|i| {
            let mut g = Gen::new(seed, 100, i);
            let acceptable = g.below(2) == 0;
            let flaw = match (acceptable, g.below(2)) {
                (true, _) => Flaw::None,
                (false, 0) => Flaw::Verb,
                (false, _) => Flaw::Determiner,
            };
            let topic = g.topic();
            let (text, _) = g.sentence(topic, None, flaw);
            Judgement { text, acceptable }
        })
        .collect()
}

// --- the generator -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    Verb,
    Determiner,
}

struct Topic {
    nouns: &'static [(&'static str, &'static str)],
    verbs: &'static [(&'static str, &'static str)],
    intransitive: &'static [(&'static str, &'static str)],
    adjectives: &'static [&'static str],
    places: &'static [&'static str],
}

const TOPICS: [Topic; 5] = [
    Topic {
        nouns: &[
            ("farmer", "farmers"),
            ("cow", "cows"),
            ("horse", "horses"),
            ("field", "fields"),
            ("barn", "barns"),
            ("goat", "goats"),
            ("tractor", "tractors"),
            ("lamb", "lambs"),
            ("hen", "hens"),
            ("fence", "fences"),
            ("seed", "seeds"),
            ("harvest", "harvests"),
        ],
        verbs: &[
            ("feeds", "feed"),
            ("plants", "plant"),
            ("watches", "watch"),
            ("repairs", "repair"),
            ("follows", "follow"),
            ("carries", "carry"),
            ("counts", "count"),
            ("guards", "guard"),
        ],
        intransitive: &[
            ("sleeps", "sleep"),
            ("grazes", "graze"),
            ("rests", "rest"),
            ("grows", "grow"),
        ],
        adjectives: &[
            "muddy", "green", "quiet", "hungry", "golden", "old", "wooden", "tired",
        ],
        places: &[
            "the meadow",
            "the barn",
            "the orchard",
            "the hill",
            "the pond",
        ],
    },
    Topic {
        nouns: &[
            ("sailor", "sailors"),
            ("ship", "ships"),
            ("wave", "waves"),
            ("dolphin", "dolphins"),
            ("captain", "captains"),
            ("net", "nets"),
            ("island", "islands"),
            ("gull", "gulls"),
            ("anchor", "anchors"),
            ("storm", "storms"),
            ("harbor", "harbors"),
            ("shell", "shells"),
        ],
        verbs: &[
            ("steers", "steer"),
            ("catches", "catch"),
            ("sees", "see"),
            ("pulls", "pull"),
            ("crosses", "cross"),
            ("mends", "mend"),
            ("follows", "follow"),
            ("finds", "find"),
        ],
        intransitive: &[
            ("drifts", "drift"),
            ("sinks", "sink"),
            ("swims", "swim"),
            ("waits", "wait"),
        ],
        adjectives: &[
            "salty", "blue", "rough", "calm", "distant", "wet", "brave", "heavy",
        ],
        places: &["the shore", "the deck", "the bay", "the reef", "the coast"],
    },
    Topic {
        nouns: &[
            ("driver", "drivers"),
            ("bus", "buses"),
            ("street", "streets"),
            ("tower", "towers"),
            ("shop", "shops"),
            ("crowd", "crowds"),
            ("train", "trains"),
            ("lamp", "lamps"),
            ("bridge", "bridges"),
            ("worker", "workers"),
            ("office", "offices"),
            ("bicycle", "bicycles"),
        ],
        verbs: &[
            ("builds", "build"),
            ("passes", "pass"),
            ("visits", "visit"),
            ("cleans", "clean"),
            ("opens", "open"),
            ("watches", "watch"),
            ("paints", "paint"),
            ("closes", "close"),
        ],
        intransitive: &[
            ("waits", "wait"),
            ("hurries", "hurry"),
            ("stops", "stop"),
            ("shines", "shine"),
        ],
        adjectives: &[
            "busy", "tall", "noisy", "bright", "narrow", "crowded", "modern", "grey",
        ],
        places: &[
            "the station",
            "the square",
            "the market",
            "the corner",
            "the park",
        ],
    },
    Topic {
        nouns: &[
            ("hunter", "hunters"),
            ("fox", "foxes"),
            ("tree", "trees"),
            ("owl", "owls"),
            ("rabbit", "rabbits"),
            ("path", "paths"),
            ("river", "rivers"),
            ("wolf", "wolves"),
            ("leaf", "leaves"),
            ("bear", "bears"),
            ("stone", "stones"),
            ("mushroom", "mushrooms"),
        ],
        verbs: &[
            ("tracks", "track"),
            ("hears", "hear"),
            ("climbs", "climb"),
            ("hides", "hide"),
            ("gathers", "gather"),
            ("follows", "follow"),
            ("crosses", "cross"),
            ("finds", "find"),
        ],
        intransitive: &[
            ("howls", "howl"),
            ("falls", "fall"),
            ("hides", "hide"),
            ("wanders", "wander"),
        ],
        adjectives: &[
            "dark", "ancient", "silent", "wild", "mossy", "cold", "deep", "small",
        ],
        places: &[
            "the clearing",
            "the valley",
            "the cave",
            "the ridge",
            "the woods",
        ],
    },
    Topic {
        nouns: &[
            ("teacher", "teachers"),
            ("student", "students"),
            ("book", "books"),
            ("lesson", "lessons"),
            ("desk", "desks"),
            ("map", "maps"),
            ("pencil", "pencils"),
            ("class", "classes"),
            ("poem", "poems"),
            ("child", "children"),
            ("question", "questions"),
            ("garden", "gardens"),
        ],
        verbs: &[
            ("reads", "read"),
            ("writes", "write"),
            ("explains", "explain"),
            ("answers", "answer"),
            ("draws", "draw"),
            ("studies", "study"),
            ("helps", "help"),
            ("asks", "ask"),
        ],
        intransitive: &[
            ("listens", "listen"),
            ("laughs", "laugh"),
            ("learns", "learn"),
            ("sings", "sing"),
        ],
        adjectives: &[
            "clever",
            "young",
            "careful",
            "long",
            "difficult",
            "new",
            "curious",
            "patient",
        ],
        places: &[
            "the library",
            "the classroom",
            "the hall",
            "the playground",
            "the garden",
        ],
    },
];

const ADVERBS: [&str; 8] = [
    "slowly",
    "quietly",
    "often",
    "always",
    "never",
    "again",
    "suddenly",
    "carefully",
];
const PREPOSITIONS: [&str; 6] = ["near", "behind", "inside", "beyond", "across", "under"];

struct Gen {
    rng: ChaCha8Rng,
}

impl Gen {
    fn new(seed: u64, stream: u64, index: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&stream.to_le_bytes());
        key[16..24].copy_from_slice(&index.to_le_bytes());
        key[24..].copy_from_slice(b"kilncorp");
        Self {
            rng: ChaCha8Rng::from_seed(key),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn topic(&mut self) -> &'static Topic {
        &TOPICS[self.below(TOPICS.len())]
    }

    // --- prose ---

    /// A noun phrase; returns (text, plural).
    fn noun_phrase(&mut self, t: &'static Topic, flaw: Flaw, depth: usize) -> (String, bool) {
        let plural = self.chance(45);
        let (sg, pl) = self.pick(t.nouns);
        let noun = if plural { pl } else { sg };
        // A flawed determiner agrees with the other number.
        let det_plural = if flaw == Flaw::Determiner {
            !plural
        } else {
            plural
        };
        // `the` fits both numbers, so a flawed phrase never uses it.
        let det = match (det_plural, flaw == Flaw::Determiner || self.chance(60)) {
            (_, false) => "the",
            (true, true) => self.pick(&["some", "these", "many", "two"]),
            (false, true) => self.pick(&["a", "this", "one", "every"]),
        };
        let adjective = if self.chance(50) {
            Some(self.pick(t.adjectives))
        } else {
            None
        };
        let next = adjective.unwrap_or(noun);
        let det = if det == "a" && next.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            det
        };
        let mut s = String::from(det);
        if let Some(a) = adjective {
            s.push(' ');
            s.push_str(a);
        }
        s.push(' ');
        s.push_str(noun);
        if depth == 0 && self.chance(20) {
            // Relative clause: the verb agrees with the head noun.
            let (v3, v) = self.pick(t.verbs);
            let (obj, _) = self.noun_phrase(t, Flaw::None, depth + 1);
            let _ = write!(s, " that {} {obj}", if plural { v } else { v3 });
        }
        (s, plural)
    }

    /// A sentence and whether its subject is plural.
    fn sentence(&mut self, t: &'static Topic, subject: Option<bool>, flaw: Flaw) -> (String, bool) {
        let (subj, plural) = match subject {
            Some(plural) if flaw == Flaw::None => {
                ((if plural { "they" } else { "it" }).to_owned(), plural)
            }
            _ => self.noun_phrase(
                t,
                if flaw == Flaw::Determiner {
                    Flaw::Determiner
                } else {
                    Flaw::None
                },
                0,
            ),
        };
        let agree = if flaw == Flaw::Verb { !plural } else { plural };
        let mut s = subj;
        if self.chance(20) {
            s.push(' ');
            s.push_str(self.pick(&ADVERBS));
        }
        match self.below(10) {
            0..=5 => {
                let (v3, v) = self.pick(t.verbs);
                let (obj, _) = self.noun_phrase(t, Flaw::None, 1);
                let _ = write!(s, " {} {obj}", if agree { v } else { v3 });
            }
            6..=7 => {
                let (v3, v) = self.pick(t.intransitive);
                let _ = write!(s, " {}", if agree { v } else { v3 });
            }
            _ => {
                let _ = write!(
                    s,
                    " {} {}",
                    if agree { "are" } else { "is" },
                    self.pick(t.adjectives)
                );
            }
        }
        if self.chance(40) {
            let _ = write!(s, " {} {}", self.pick(&PREPOSITIONS), self.pick(t.places));
        }
        (s, plural)
    }

    fn paragraph(&mut self) -> String {
        let t = self.topic();
        let n = self.range(3, 7);
        let mut out = String::new();
        let mut last: Option<bool> = None;
        for i in 0..n {
            // Pronouns refer back to the previous sentence's subject and agree with it.
            let pronoun = if i > 0 && self.chance(30) { last } else { None };
            let (mut s, plural) = self.sentence(t, pronoun, Flaw::None);
            last = Some(plural);
            if self.chance(15) {
                let (more, _) = self.sentence(t, None, Flaw::None);
                let _ = write!(s, ", and {more}");
            }
            if i > 0 {
                out.push(' ');
            }
            let mut c = s.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
            out.push('.');
        }
        out
    }

    // --- code ---

    fn code_file(&mut self) -> String {
        let n = self.range(2, 4);
        (0..n)
            .map(|_| self.function())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn function(&mut self) -> String {
        const THINGS: [(&str, &str); 10] = [
            ("values", "value"),
            ("items", "item"),
            ("scores", "score"),
            ("prices", "price"),
            ("counts", "count"),
            ("weights", "weight"),
            ("lengths", "length"),
            ("ages", "age"),
            ("points", "point"),
            ("sizes", "size"),
        ];
        let (xs, x) = self.pick(&THINGS);
        let k = self.range(2, 9);
        let acc = self.pick(&["total", "result", "acc", "best", "out"]);
        match self.below(6) {
            0 => format!(
                "def sum_{xs}({xs}):\n    {acc} = 0\n    for {x} in {xs}:\n        {acc} = {acc} + {x}\n    return {acc}\n"
            ),
            1 => format!(
                "def scale_{xs}({xs}, factor):\n    {acc} = []\n    for {x} in {xs}:\n        {acc}.append({x} * factor)\n    return {acc}\n"
            ),
            2 => format!(
                "def count_large_{xs}({xs}, limit={k}):\n    {acc} = 0\n    for {x} in {xs}:\n        if {x} > limit:\n            {acc} += 1\n    return {acc}\n"
            ),
            3 => format!(
                "def max_{x}({xs}):\n    {acc} = {xs}[0]\n    for {x} in {xs}[1:]:\n        if {x} > {acc}:\n            {acc} = {x}\n    return {acc}\n"
            ),
            4 => format!(
                "def clamp_{x}({x}, low, high):\n    if {x} < low:\n        return low\n    if {x} > high:\n        return high\n    return {x}\n"
            ),
            _ => format!(
                "def keep_even_{xs}({xs}):\n    {acc} = []\n    for {x} in {xs}:\n        if {x} % {k} == 0:\n            {acc}.append({x})\n    return {acc}\n"
            ),
        }
    }

    // --- arithmetic ---

    fn arithmetic(&mut self) -> String {
        let n = self.range(4, 10);
        let mut out = String::new();
        for _ in 0..n {
            let a = self.range(0, 99) as i64;
            let b = self.range(0, 99) as i64;
            let line = match self.below(3) {
                0 => format!("{a} + {b} = {}", a + b),
                1 => format!("{a} - {b} = {}", a - b),
                _ => {
                    let b = b % 13;
                    format!("{a} * {b} = {}", a * b)
                }
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_and_prefix_stable() {
        for d in Domain::ALL {
            let a = documents(d, 7, 0, 20);
            assert_eq!(a, documents(d, 7, 0, 20));
            assert_eq!(a[5..], documents(d, 7, 5, 15)[..]);
            assert_ne!(a, documents(d, 8, 0, 20));
            assert!(a.iter().all(|s| !s.is_empty()));
        }
    }

    #[test]
    fn arithmetic_is_correct() {
        for doc in documents(Domain::Arithmetic, 1, 0, 50) {
            for line in doc.lines() {
                let w: Vec<&str> = line.split(' ').collect();
                let (a, b, c): (i64, i64, i64) = (
                    w[0].parse().unwrap(),
                    w[2].parse().unwrap(),
                    w[4].parse().unwrap(),
                );
                let want = match w[1] {
                    "+" => a + b,
                    "-" => a - b,
                    "*" => a * b,
                    op => panic!("{op}"),
                };
                assert_eq!(c, want, "{line}");
            }
        }
    }

    #[test]
    fn probe_is_balanced_and_flaws_are_agreement_errors() {
        let j = acceptability(3, 0, 2000);
        let ok = j.iter().filter(|j| j.acceptable).count();
        assert!((900..1100).contains(&ok), "{ok}");
        // Grammatical sentences never pair a singular determiner with a plural-only form.
        for s in j.iter().filter(|j| j.acceptable) {
            assert!(
                !s.text.contains("a dogs") && !s.text.starts_with("these farmer "),
                "{}",
                s.text
            );
        }
        let flawed = j.iter().find(|j| !j.acceptable).unwrap();
        assert_ne!(flawed.text, "");
    }

    #[test]
    fn domains_look_different() {
        let prose = document(Domain::Prose, 0, 0);
        let code = document(Domain::Code, 0, 0);
        let math = document(Domain::Arithmetic, 0, 0);
        assert!(
            prose.ends_with('.') && prose.chars().next().unwrap().is_uppercase(),
            "{prose}"
        );
        assert!(
            code.starts_with("def ") && code.contains("    return "),
            "{code}"
        );
        assert!(math.contains(" = "), "{math}");
        assert!(
            Domain::from_name("poetry")
                .unwrap_err()
                .to_string()
                .contains("prose, code and arithmetic")
        );
    }
}
