//! Autoscaling: how many replicas a workload with `[scaling]` should run, from the load its
//! replicas report. A pure machine: time comes in as `now_ms`, nothing is read or written.
//!
//! One [`Scaler`] per workload, run only where that workload's scaling lease is held (the
//! shell's business), so exactly one node decides. Call order, at every load tick (every few
//! seconds): [`Scaler::observe`] with the per-replica values seen now, then [`Scaler::decide`]
//! with the policy and the replica count in force; write a returned [`Decision`] to the
//! desired state. There are no timers: a tick with nothing to do returns `None`, and so does
//! a tick that comes early or twice.
//!
//! The rules (windows are [`ScaleConfig`]'s, defaults in brackets):
//! - **Load** is the average value over the replicas with a fresh sample (younger than
//!   `sample_max_age_ms` [30 s]). A replica without one is left out, not counted as zero: one
//!   that just started or whose node gossips late would otherwise pull the average down and
//!   scale the workload down while it is busy. No fresh sample, no decision (blind).
//! - **Recommendation** at each tick: `ceil(current * average / target)`, clamped to
//!   `[min, max]`; within the tolerance band (`|average - target| <= tolerance_percent`
//!   [10 %] of target) it is `current`, so a load that hovers near its target changes nothing.
//! - **Up** when the lowest recommendation of the last `up_window_ms` [10 s] is above the
//!   count: the need must last a couple of samples, one spike is not enough. At most doubling
//!   per step (from 0: to 1).
//! - **Down** to the highest recommendation of the last `down_window_ms` [2 min, Kubernetes'
//!   HPA stabilisation window], when that is below the count; never within `down_window_ms` of
//!   a scale-up, and only once this scaler has watched a whole down window (a new lease holder
//!   has not seen the peaks its predecessor saw). A load that oscillates faster than the down
//!   window therefore keeps the count of its peaks: no up/down/up.
//! - **Settle**: after the count changes (here or by an operator) nothing is recorded for
//!   `settle_ms` [20 s]. New replicas need to start and take their share, and the load gossip
//!   to show it; reading the old per-replica load against the new count would scale twice for
//!   one rise.
//! - **Bounds**: a count outside `[min, max]` (the policy changed, an operator scaled by hand)
//!   is brought back at once, whatever the windows say.
//! - A change of metric or target restarts the watch (recommendations under the old one mean
//!   nothing under the new one).
//! - The last `decisions_kept` [16] decisions are kept with why, for `describe`.

use std::collections::{BTreeMap, VecDeque};

use starling_protocol::spec::{ScalingMetric, ScalingPolicy};

#[cfg(test)]
mod tests;

/// The scaler's windows and bounds. [`ScaleConfig::default`] lists the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleConfig {
    /// How far (percent of target) the average may be from target with nothing done.
    /// Default 10.
    pub tolerance_percent: u64,
    /// How long a need for more replicas must last before a scale-up. Default 10 s (two
    /// samples at the agent's 5 s load interval).
    pub up_window_ms: u64,
    /// The cool-down: a scale-down goes to the highest need of this window, and never
    /// follows a scale-up closer than this. Default 2 min.
    pub down_window_ms: u64,
    /// After the count changes, how long before load is read against it again. Default 20 s.
    pub settle_ms: u64,
    /// A replica's sample older than this is left out of the average. Default 30 s.
    pub sample_max_age_ms: u64,
    /// Decisions kept for `describe`. Default 16.
    pub decisions_kept: usize,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            tolerance_percent: 10,
            up_window_ms: 10_000,
            down_window_ms: 120_000,
            settle_ms: 20_000,
            sample_max_age_ms: 30_000,
            decisions_kept: 16,
        }
    }
}

/// A change of replica count the scaler asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// When it was taken.
    pub at_ms: u64,
    /// The count it was taken against.
    pub from: u32,
    /// The count to write.
    pub to: u32,
    /// One line for `describe`, e.g. `cpu 142% of request > target 70% over 3 replicas for
    /// 10 s: 3 -> 6`.
    pub why: String,
}

/// The load the scaler sees now: the average over the replicas with a fresh sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Average {
    /// The average value (rounded to nearest), in the policy's unit.
    pub value: u64,
    /// How many replicas had a fresh sample.
    pub replicas: u32,
}

/// The autoscaler of one workload. See the module doc for the rules and the call order.
#[derive(Debug, Clone)]
pub struct Scaler {
    config: ScaleConfig,
    /// Latest value per replica index.
    samples: BTreeMap<u32, Sample>,
    /// Recommendations, oldest first, one step per `resolution_ms`.
    history: VecDeque<Step>,
    /// Since when recommendations of the current metric and target are recorded.
    watching_since_ms: Option<u64>,
    /// The count seen at the last `decide`, to notice changes made elsewhere.
    count_seen: Option<u32>,
    /// When the count last changed; load is not read until `settle_ms` after it.
    changed_at_ms: Option<u64>,
    last_up_at_ms: Option<u64>,
    /// Metric and target the history was recorded under.
    measured_as: Option<(ScalingMetric, u64)>,
    decisions: VecDeque<Decision>,
}

impl Scaler {
    /// A scaler that has seen nothing yet: it scales up as soon as a need lasts an up window
    /// and down only after watching a whole down window.
    pub fn new(config: ScaleConfig) -> Self {
        Scaler {
            config,
            samples: BTreeMap::new(),
            history: VecDeque::new(),
            watching_since_ms: None,
            count_seen: None,
            changed_at_ms: None,
            last_up_at_ms: None,
            measured_as: None,
            decisions: VecDeque::new(),
        }
    }

    /// Records the per-replica values seen at `now_ms` (replica index, value in the policy's
    /// unit: percent of the CPU request, or the custom metric). Values of indices at or past
    /// `replicas_current` are of replicas being removed and are dropped; replicas missing from
    /// `values` keep their last sample until it is older than `sample_max_age_ms`.
    pub fn observe(
        &mut self,
        now_ms: u64,
        replicas_current: u32,
        values: impl IntoIterator<Item = (u32, u64)>,
    ) {
        for (index, value) in values {
            if index < replicas_current {
                self.samples.insert(
                    index,
                    Sample {
                        value,
                        at_ms: now_ms,
                    },
                );
            }
        }
        let max_age = self.config.sample_max_age_ms;
        self.samples.retain(|index, s| {
            *index < replicas_current && now_ms.saturating_sub(s.at_ms) <= max_age
        });
    }

    /// The count to change to, if any, for a workload running `current` replicas under
    /// `policy`. Call after [`Scaler::observe`]; a returned decision is also kept for
    /// [`Scaler::decisions`], and the scaler assumes it is applied (it settles from now).
    pub fn decide(
        &mut self,
        now_ms: u64,
        policy: &ScalingPolicy,
        current: u32,
    ) -> Option<Decision> {
        let (min, max) = (policy.min, policy.max.max(policy.min));
        self.note_policy(now_ms, policy);
        if self.count_seen.is_some_and(|seen| seen != current) {
            self.changed_at_ms = Some(now_ms);
        }
        self.count_seen = Some(current);
        if current < min {
            let why = format!("below scaling.min {min}: {current} -> {min}");
            return Some(self.take(now_ms, current, min, why));
        }
        if current > max {
            let why = format!("above scaling.max {max}: {current} -> {max}");
            return Some(self.take(now_ms, current, max, why));
        }
        let settling = self
            .changed_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(self.config.settle_ms));
        let load = self.average(now_ms, current)?;
        if settling {
            return None;
        }
        let need = self.recommend(policy, current, load);
        self.remember(now_ms, need);
        self.scale_up(now_ms, policy, current, load)
            .or_else(|| self.scale_down(now_ms, policy, current, load))
    }

    /// The average over the replicas with a fresh sample, `None` when none has one.
    pub fn average(&self, now_ms: u64, current: u32) -> Option<Average> {
        let max_age = self.config.sample_max_age_ms;
        let fresh = self
            .samples
            .iter()
            .filter(|(i, s)| **i < current && now_ms.saturating_sub(s.at_ms) <= max_age);
        let (sum, n) = fresh.fold((0u128, 0u32), |(sum, n), (_, s)| {
            (sum + u128::from(s.value), n + 1)
        });
        if n == 0 {
            return None;
        }
        let average = (sum + u128::from(n) / 2) / u128::from(n);
        Some(Average {
            value: u64::try_from(average).unwrap_or(u64::MAX),
            replicas: n,
        })
    }

    /// The decisions kept, oldest first.
    pub fn decisions(&self) -> impl DoubleEndedIterator<Item = &Decision> {
        self.decisions.iter()
    }

    /// The scaler's settings.
    pub fn config(&self) -> &ScaleConfig {
        &self.config
    }
}

/// One replica's latest value.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: u64,
    at_ms: u64,
}

/// The lowest and highest recommendation of the ticks within one resolution step.
#[derive(Debug, Clone, Copy)]
struct Step {
    first_ms: u64,
    last_ms: u64,
    lowest: u32,
    highest: u32,
}

/// Steps of history at most; the resolution grows with the windows to keep to it.
const STEPS_MAX: u64 = 512;
/// Finest history step: ticks closer than this share one.
const STEP_MS_MIN: u64 = 1_000;

impl Scaler {
    /// A new metric or target restarts the watch: old recommendations were made against
    /// another yardstick.
    fn note_policy(&mut self, now_ms: u64, policy: &ScalingPolicy) {
        let measured_as = (policy.metric.clone(), policy.target);
        if self.measured_as.as_ref() != Some(&measured_as) {
            self.history.clear();
            self.watching_since_ms = Some(now_ms);
            self.measured_as = Some(measured_as);
        }
    }

    /// `ceil(current * average / target)` within `[min, max]`, or `current` in the band.
    fn recommend(&self, policy: &ScalingPolicy, current: u32, load: Average) -> u32 {
        let (min, max) = (policy.min, policy.max.max(policy.min));
        let target = u128::from(policy.target.max(1));
        let average = u128::from(load.value);
        let off = average.abs_diff(target);
        if off * 100 <= u128::from(self.config.tolerance_percent) * target {
            return current.clamp(min, max);
        }
        let need = (u128::from(current) * average).div_ceil(target);
        u32::try_from(need).unwrap_or(u32::MAX).clamp(min, max)
    }

    fn step_ms(&self) -> u64 {
        let longest = self.config.up_window_ms.max(self.config.down_window_ms);
        (longest / STEPS_MAX).max(STEP_MS_MIN)
    }

    fn remember(&mut self, now_ms: u64, need: u32) {
        let step_ms = self.step_ms();
        match self.history.back_mut() {
            Some(step) if now_ms.saturating_sub(step.first_ms) < step_ms => {
                step.last_ms = now_ms;
                step.lowest = step.lowest.min(need);
                step.highest = step.highest.max(need);
            }
            _ => self.history.push_back(Step {
                first_ms: now_ms,
                last_ms: now_ms,
                lowest: need,
                highest: need,
            }),
        }
        let keep_ms = self.config.up_window_ms.max(self.config.down_window_ms);
        while self
            .history
            .front()
            .is_some_and(|s| s.last_ms.saturating_add(keep_ms) < now_ms)
        {
            self.history.pop_front();
        }
        // One step per `step_ms` over the longest window, plus the one being filled.
        debug_assert!(self.history.len() as u64 <= STEPS_MAX + 2);
    }

    /// Steps whose ticks fall (at least partly) within the last `window_ms`.
    fn window(&self, now_ms: u64, window_ms: u64) -> impl Iterator<Item = &Step> {
        self.history
            .iter()
            .filter(move |s| s.last_ms.saturating_add(window_ms) >= now_ms)
    }

    fn scale_up(
        &mut self,
        now_ms: u64,
        policy: &ScalingPolicy,
        current: u32,
        load: Average,
    ) -> Option<Decision> {
        let window = self.window(now_ms, self.config.up_window_ms);
        let (lowest, since_ms) = window.fold((u32::MAX, now_ms), |(lowest, since), s| {
            (lowest.min(s.lowest), since.min(s.first_ms))
        });
        if lowest == u32::MAX || lowest <= current {
            return None;
        }
        let step_max = current.saturating_mul(2).max(1);
        let to = lowest.min(step_max);
        let capped = if to < lowest {
            format!(" (at most double per step; {lowest} needed)")
        } else {
            String::new()
        };
        let lasted = match now_ms.saturating_sub(since_ms) / 1_000 {
            0 => String::new(),
            s => format!(" for {s} s"),
        };
        let why = format!(
            "{} > target {} over {}{lasted}: {current} -> {to}{capped}",
            measure(&policy.metric, load.value),
            target(&policy.metric, policy.target),
            replicas(load.replicas, current),
        );
        Some(self.take(now_ms, current, to, why))
    }

    fn scale_down(
        &mut self,
        now_ms: u64,
        policy: &ScalingPolicy,
        current: u32,
        load: Average,
    ) -> Option<Decision> {
        let window_ms = self.config.down_window_ms;
        let watched = self
            .watching_since_ms
            .is_some_and(|since| since.saturating_add(window_ms) <= now_ms);
        let cooled = self
            .last_up_at_ms
            .is_none_or(|at| at.saturating_add(window_ms) <= now_ms);
        if !watched || !cooled {
            return None;
        }
        let highest = self.window(now_ms, window_ms).map(|s| s.highest).max()?;
        if highest >= current {
            return None;
        }
        let why = format!(
            "{} < target {} over {}, highest need over the last {} s {highest}: {current} -> {highest}",
            measure(&policy.metric, load.value),
            target(&policy.metric, policy.target),
            replicas(load.replicas, current),
            window_ms / 1_000,
        );
        Some(self.take(now_ms, current, highest, why))
    }

    /// Keeps `to` as decided now: the count is taken as changed, so load settles from here.
    fn take(&mut self, now_ms: u64, from: u32, to: u32, why: String) -> Decision {
        debug_assert_ne!(from, to, "a decision changes the count");
        if to > from {
            self.last_up_at_ms = Some(now_ms);
        }
        self.changed_at_ms = Some(now_ms);
        self.count_seen = Some(to);
        let decision = Decision {
            at_ms: now_ms,
            from,
            to,
            why,
        };
        if self.config.decisions_kept > 0 {
            if self.decisions.len() >= self.config.decisions_kept {
                self.decisions.pop_front();
            }
            self.decisions.push_back(decision.clone());
        }
        decision
    }
}

fn measure(metric: &ScalingMetric, average: u64) -> String {
    match metric {
        ScalingMetric::Cpu => format!("cpu {average}% of request"),
        ScalingMetric::Custom(name) => format!("{name} {average}"),
    }
}

fn target(metric: &ScalingMetric, target: u64) -> String {
    match metric {
        ScalingMetric::Cpu => format!("{target}%"),
        ScalingMetric::Custom(_) => target.to_string(),
    }
}

fn replicas(reporting: u32, current: u32) -> String {
    match (reporting, current) {
        (1, 1) => "1 replica".to_string(),
        (r, c) if r == c => format!("{r} replicas"),
        (r, c) => format!("{r} of {c} replicas"),
    }
}
