//! Weighted fair sharing by virtual time (start-time fair queuing, Goyal et
//! al. 1996): each tenant's virtual time advances by the cost of the work it
//! was served divided by its weight, and the backlogged tenant with the
//! smallest virtual time goes next. Over any busy period each tenant gets
//! service in proportion to its weight, whatever its work costs.

/// Virtual time per tenant. Tenants are small integers (model indices); one
/// never seen has weight 1.
#[derive(Clone, Debug, Default)]
pub struct Fairness {
    weights: Vec<u32>,
    vt: Vec<f64>,
    /// The system's virtual time: the start of the work served last. A
    /// tenant that becomes backlogged again starts here, so time spent idle
    /// is not banked as credit to flood the others with later.
    now: f64,
}

impl Fairness {
    /// `weights[t]` is tenant `t`'s share (0 counts as 1).
    pub fn new(weights: &[u32]) -> Fairness {
        Fairness { weights: weights.iter().map(|&w| w.max(1)).collect(), vt: vec![0.0; weights.len()], now: 0.0 }
    }

    fn grow(&mut self, tenant: usize) {
        if tenant >= self.vt.len() {
            self.vt.resize(tenant + 1, self.now);
            self.weights.resize(tenant + 1, 1);
        }
    }

    /// New shares (tenants appear as models are loaded); virtual times stay.
    pub fn set_weights(&mut self, weights: &[u32]) {
        for (t, &w) in weights.iter().enumerate() {
            self.grow(t);
            self.weights[t] = w.max(1);
        }
    }

    /// The tenant's place in line: smaller goes first.
    pub fn key(&self, tenant: usize) -> f64 {
        self.vt.get(tenant).copied().unwrap_or(self.now)
    }

    /// The tenant had nothing waiting and now has: it starts no earlier than
    /// the work served last.
    pub fn activate(&mut self, tenant: usize) {
        self.grow(tenant);
        self.vt[tenant] = self.vt[tenant].max(self.now);
    }

    /// The tenant's work starts being served.
    pub fn serve(&mut self, tenant: usize) {
        self.grow(tenant);
        self.now = self.now.max(self.vt[tenant]);
    }

    /// The tenant was served `cost` (any unit, the same for every tenant).
    pub fn charge(&mut self, tenant: usize, cost: f64) {
        self.grow(tenant);
        self.vt[tenant] += cost.max(0.0) / f64::from(self.weights[tenant]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the tenant with the smallest virtual time `n` times at
    /// `cost[t]` each; returns how much each got.
    fn run(f: &mut Fairness, backlogged: &[usize], cost: &[f64], n: usize) -> Vec<f64> {
        let mut got = vec![0.0; cost.len()];
        for _ in 0..n {
            let t = *backlogged.iter().min_by(|a, b| f.key(**a).total_cmp(&f.key(**b)).then(a.cmp(b))).unwrap();
            f.serve(t);
            f.charge(t, cost[t]);
            got[t] += cost[t];
        }
        got
    }

    #[test]
    fn service_follows_the_weights_whatever_the_costs() {
        let mut f = Fairness::new(&[3, 1]);
        // Tenant 1's work costs four times tenant 0's.
        let got = run(&mut f, &[0, 1], &[1.0, 4.0], 4000);
        let ratio = got[0] / got[1];
        assert!((ratio - 3.0).abs() < 0.05, "{got:?}");
    }

    #[test]
    fn idle_time_is_not_banked() {
        let mut f = Fairness::new(&[1, 1]);
        run(&mut f, &[0], &[1.0, 1.0], 100);
        f.activate(1);
        // Tenant 1 arrives late: it shares from now on, it does not get 100
        // turns in a row.
        let got = run(&mut f, &[0, 1], &[1.0, 1.0], 10);
        assert_eq!(got, vec![5.0, 5.0]);
    }

    #[test]
    fn unknown_tenants_weigh_one() {
        let mut f = Fairness::new(&[]);
        f.activate(4);
        f.charge(4, 2.0);
        assert_eq!(f.key(4), 2.0);
        assert_eq!(f.key(9), 0.0);
        assert_eq!(Fairness::new(&[0]).weights, vec![1]);
    }
}
