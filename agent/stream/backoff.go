package stream

import "time"

// BackoffConfig is gRPC's connection backoff
// (https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md):
// the delay before reconnect attempt n (from 0) is
// min(Base * Multiplier^n, Max), then spread by ±Jitter. As in gRPC, the
// jitter applies after the cap, so a capped delay lies within Max ±Jitter.
// Zero fields take the defaults.
type BackoffConfig struct {
	Base       time.Duration // default 1s
	Multiplier float64       // default 1.6
	Jitter     float64       // fraction, default 0.2 (±20%)
	Max        time.Duration // default 120s
	// ResetAfter: a session that stayed up at least this long (after
	// Welcome) starts the schedule again from Base. Default 10s.
	ResetAfter time.Duration
}

// Default backoff settings.
const (
	DefaultBaseDelay  = time.Second
	DefaultMultiplier = 1.6
	DefaultJitter     = 0.2
	DefaultMaxDelay   = 120 * time.Second
	DefaultResetAfter = 10 * time.Second
)

// DefaultBackoff is gRPC's schedule: 1s ×1.6 ±20%, max 120s, reset after a
// session stayed up 10s.
func DefaultBackoff() BackoffConfig {
	return BackoffConfig{}.withDefaults()
}

func (b BackoffConfig) withDefaults() BackoffConfig {
	if b.Base <= 0 {
		b.Base = DefaultBaseDelay
	}
	if b.Multiplier < 1 {
		b.Multiplier = DefaultMultiplier
	}
	if b.Jitter <= 0 || b.Jitter >= 1 {
		b.Jitter = DefaultJitter
	}
	if b.Max <= 0 {
		b.Max = DefaultMaxDelay
	}
	if b.Max < b.Base {
		b.Max = b.Base
	}
	if b.ResetAfter <= 0 {
		b.ResetAfter = DefaultResetAfter
	}
	return b
}

// Schedule is the delay before attempt n without jitter.
func (b BackoffConfig) Schedule(attempt int) time.Duration {
	b = b.withDefaults()
	d := float64(b.Base)
	for i := 0; i < attempt && d < float64(b.Max); i++ {
		d *= b.Multiplier
	}
	return time.Duration(min(d, float64(b.Max)))
}

// Delay is the delay before attempt n (0 for the first retry), given r, a
// uniformly random number in [0, 1): r=0.5 is the schedule itself, r→0 is
// -Jitter, r→1 is +Jitter. It is a pure function so that it can be tested.
func (b BackoffConfig) Delay(attempt int, r float64) time.Duration {
	b = b.withDefaults()
	r = min(max(r, 0), 1)
	d := float64(b.Schedule(attempt))
	return time.Duration(d * (1 + b.Jitter*(2*r-1)))
}
