//! Deterministic splits: an image's split depends only on its content hash and the
//! dataset's seed, so re-uploading the same photos gives the same split, whatever
//! their order or names.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Valid => "valid",
            Self::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|split| split.as_str() == s)
    }
}

/// Train/valid/test fractions; they must be non-negative, train positive, summing to 1.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitFractions {
    pub train: f64,
    pub valid: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        Self { train: 0.75, valid: 0.15, test: 0.10 }
    }
}

impl SplitFractions {
    pub fn validate(&self) -> Result<(), String> {
        let parts = [self.train, self.valid, self.test];
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) || self.train <= 0.0 {
            return Err("split fractions must be non-negative numbers with train > 0".into());
        }
        if (parts.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(format!("split fractions must sum to 1 (got {})", parts.iter().sum::<f64>()));
        }
        Ok(())
    }

    pub fn as_array(&self) -> [f64; 3] {
        [self.train, self.valid, self.test]
    }
}

/// The split of the image whose sha256 (hex) is `content_hash`.
pub fn assign_split(content_hash: &str, seed: u64, fractions: &SplitFractions) -> Split {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(content_hash.as_bytes());
    let digest = hasher.finalize();
    let draw = u64::from_le_bytes(digest[..8].try_into().expect("a sha256 digest has 32 bytes")) as f64 / 2f64.powi(64);
    if draw < fractions.train {
        Split::Train
    } else if draw < fractions.train + fractions.valid {
        Split::Valid
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_deterministic_and_follow_the_fractions() {
        let fractions = SplitFractions::default();
        let hashes: Vec<String> = (0..20_000).map(|i| hex::encode(Sha256::digest(format!("img{i}")))).collect();
        let mut counts = [0usize; 3];
        for hash in &hashes {
            let split = assign_split(hash, 42, &fractions);
            assert_eq!(split, assign_split(hash, 42, &fractions));
            counts[Split::ALL.iter().position(|s| *s == split).unwrap()] += 1;
        }
        // Binomial standard deviation at n = 20 000 is under 0.004 for each fraction: allow 0.015.
        for (count, want) in counts.iter().zip(fractions.as_array()) {
            let got = *count as f64 / hashes.len() as f64;
            assert!((got - want).abs() < 0.015, "{got} vs {want}");
        }
        // Another seed gives another split for many images.
        let moved =
            hashes.iter().filter(|h| assign_split(h, 42, &fractions) != assign_split(h, 43, &fractions)).count();
        assert!(moved > 5_000, "{moved}");
    }

    #[test]
    fn fractions_are_validated() {
        assert!(SplitFractions { train: 0.8, valid: 0.1, test: 0.1 }.validate().is_ok());
        assert!(SplitFractions { train: 0.8, valid: 0.1, test: 0.2 }.validate().unwrap_err().contains("sum to 1"));
        assert!(SplitFractions { train: 0.0, valid: 0.5, test: 0.5 }.validate().is_err());
    }
}
