//! The Chinchilla parametric loss law `L(N, D) = E + A / N^alpha + B / D^beta` and its presets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, positive};

/// The Chinchilla parametric loss (Hoffmann et al. 2022, eq. 2):
/// `L(N, D) = E + A / N^alpha + B / D^beta`.
///
/// `N` counts parameters, `D` training tokens, and the loss is in nats per token. Build one from a
/// [`LawPreset`] (`ChinchillaLaw::sardana()`, ...) or from your own fit
/// ([`fit`](crate::fit::fit)); [`ChinchillaLaw::new`] validates hand-entered coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChinchillaLaw {
    /// Irreducible loss `E` (nats per token).
    pub e: f64,
    /// Parameter coefficient `A`.
    pub a: f64,
    /// Data coefficient `B`.
    pub b: f64,
    /// Parameter exponent `alpha`.
    pub alpha: f64,
    /// Data exponent `beta`.
    pub beta: f64,
}

impl ChinchillaLaw {
    /// Builds a law from its five coefficients, checking that each is finite and positive.
    ///
    /// # Errors
    /// [`Error::InvalidLaw`] naming the first coefficient that is not a finite positive number.
    pub fn new(e: f64, a: f64, b: f64, alpha: f64, beta: f64) -> Result<Self> {
        let law = Self {
            e,
            a,
            b,
            alpha,
            beta,
        };
        law.validate()?;
        Ok(law)
    }

    /// Checks that every coefficient is a finite positive number.
    ///
    /// # Errors
    /// [`Error::InvalidLaw`] naming the first bad coefficient.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("e", self.e),
            ("a", self.a),
            ("b", self.b),
            ("alpha", self.alpha),
            ("beta", self.beta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::InvalidLaw { name, value });
            }
        }
        Ok(())
    }

    /// Hoffmann et al. 2022, Approach 3, as printed (eq. 10): E 1.69, A 406.4, B 410.7,
    /// alpha 0.34, beta 0.28.
    pub const fn hoffmann() -> Self {
        Self {
            e: 1.69,
            a: 406.4,
            b: 410.7,
            alpha: 0.34,
            beta: 0.28,
        }
    }

    /// Hoffmann et al. 2022, Approach 3, unrounded values from the paper's TeX source as
    /// recovered by Besiroglu et al. 2024: ln E = 0.5267228, ln A = 6.0073404,
    /// ln B = 6.0179186, alpha 0.33917084, beta 0.2849083.
    pub fn hoffmann_unrounded() -> Self {
        Self {
            e: 0.526_722_8_f64.exp(),
            a: 6.007_340_4_f64.exp(),
            b: 6.017_918_6_f64.exp(),
            alpha: 0.339_170_84,
            beta: 0.284_908_3,
        }
    }

    /// The constants Sardana et al. 2024 ("Beyond Chinchilla-Optimal") actually use, and the
    /// default of their code: Hoffmann's E, A, B with alpha 0.336 and beta 0.283.
    pub const fn sardana() -> Self {
        Self {
            e: 1.69,
            a: 406.4,
            b: 410.7,
            alpha: 0.336,
            beta: 0.283,
        }
    }

    /// The refit of Besiroglu, Erdil, Barnett, You 2024 ("Chinchilla Scaling: A replication
    /// attempt", arXiv 2404.10102): E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658.
    pub const fn besiroglu() -> Self {
        Self {
            e: 1.8172,
            a: 482.01,
            b: 2085.43,
            alpha: 0.3478,
            beta: 0.3658,
        }
    }

    /// Predicted loss (nats per token) of a model of `n_params` parameters trained on
    /// `n_tokens` tokens.
    ///
    /// # Errors
    /// [`Error::NotPositive`] if either count is not a finite positive number.
    pub fn loss(&self, n_params: f64, n_tokens: f64) -> Result<f64> {
        positive("n_params (parameters)", n_params)?;
        positive("n_tokens (tokens)", n_tokens)?;
        Ok(self.loss_unchecked(n_params, n_tokens))
    }

    /// [`loss`](Self::loss) without input checks, for inner loops whose inputs are known good.
    pub(crate) fn loss_unchecked(&self, n_params: f64, n_tokens: f64) -> f64 {
        self.e + self.a * n_params.powf(-self.alpha) + self.b * n_tokens.powf(-self.beta)
    }

    /// Checks that `loss` lies above `E`, the loss of an infinite model on infinite data.
    ///
    /// # Errors
    /// [`Error::NotPositive`] for a non-finite or non-positive loss,
    /// [`Error::LossBelowIrreducible`] for `loss <= E`.
    pub fn check_reachable(&self, loss: f64) -> Result<()> {
        positive("loss (nats per token)", loss)?;
        if loss <= self.e {
            return Err(Error::LossBelowIrreducible { loss, e: self.e });
        }
        Ok(())
    }
}

impl Default for ChinchillaLaw {
    /// [`ChinchillaLaw::sardana`], the default of the reference code.
    fn default() -> Self {
        Self::sardana()
    }
}

impl fmt::Display for ChinchillaLaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "L(N, D) = {} + {} / N^{} + {} / D^{}",
            self.e, self.a, self.alpha, self.b, self.beta
        )
    }
}

/// The named laws shipped with kiln.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LawPreset {
    /// [`ChinchillaLaw::hoffmann`].
    Hoffmann,
    /// [`ChinchillaLaw::hoffmann_unrounded`].
    HoffmannUnrounded,
    /// [`ChinchillaLaw::sardana`] (the default).
    Sardana,
    /// [`ChinchillaLaw::besiroglu`].
    Besiroglu,
}

impl LawPreset {
    /// Every preset, in a stable order.
    pub const ALL: [Self; 4] = [
        Self::Sardana,
        Self::Hoffmann,
        Self::HoffmannUnrounded,
        Self::Besiroglu,
    ];

    /// The preset's name as accepted by [`FromStr`] and the CLI's `--law`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hoffmann => "hoffmann",
            Self::HoffmannUnrounded => "hoffmann-unrounded",
            Self::Sardana => "sardana",
            Self::Besiroglu => "besiroglu",
        }
    }

    /// Where the constants come from.
    pub const fn source(self) -> &'static str {
        match self {
            Self::Hoffmann => "Hoffmann et al. 2022, Approach 3 as printed (arXiv 2203.15556)",
            Self::HoffmannUnrounded => {
                "Hoffmann et al. 2022, unrounded TeX-source values (via Besiroglu et al. 2024)"
            }
            Self::Sardana => {
                "Sardana et al. 2024, the constants of the paper and its code (arXiv 2401.00448)"
            }
            Self::Besiroglu => "Besiroglu et al. 2024 replication refit (arXiv 2404.10102)",
        }
    }

    /// The law's coefficients.
    pub fn law(self) -> ChinchillaLaw {
        match self {
            Self::Hoffmann => ChinchillaLaw::hoffmann(),
            Self::HoffmannUnrounded => ChinchillaLaw::hoffmann_unrounded(),
            Self::Sardana => ChinchillaLaw::sardana(),
            Self::Besiroglu => ChinchillaLaw::besiroglu(),
        }
    }
}

impl fmt::Display for LawPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LawPreset {
    type Err = Error;

    /// Parses a preset name; `_` and `-` are interchangeable and case is ignored.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| Error::UnknownName {
                kind: "law",
                name: s.to_owned(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_by_name() {
        for preset in LawPreset::ALL {
            assert_eq!(preset.name().parse::<LawPreset>().unwrap(), preset);
            preset.law().validate().unwrap();
        }
        assert_eq!(
            "Hoffmann_Unrounded".parse::<LawPreset>().unwrap(),
            LawPreset::HoffmannUnrounded
        );
        let err = "kaplan".parse::<LawPreset>().unwrap_err().to_string();
        assert!(err.contains("kaplan") && err.contains("sardana"), "{err}");
    }

    #[test]
    fn invalid_coefficients_are_named() {
        let err = ChinchillaLaw::new(1.69, 406.4, -1.0, 0.3, 0.3).unwrap_err();
        assert!(matches!(err, Error::InvalidLaw { name: "b", .. }), "{err}");
        let err = ChinchillaLaw::new(1.69, 406.4, 410.7, f64::NAN, 0.3).unwrap_err();
        assert!(matches!(err, Error::InvalidLaw { name: "alpha", .. }));
    }

    #[test]
    fn loss_rejects_bad_counts() {
        let law = ChinchillaLaw::sardana();
        assert!(matches!(
            law.loss(0.0, 1e12),
            Err(Error::NotPositive { .. })
        ));
        assert!(matches!(
            law.loss(7e10, f64::INFINITY),
            Err(Error::NotPositive { .. })
        ));
        assert!(matches!(
            law.check_reachable(1.5),
            Err(Error::LossBelowIrreducible { .. })
        ));
    }
}
