package stream

import "time"

// BackoffConfig is gRPC's connection backoff
// (https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md):
// the delay before reconnect attempt n (from 0) is
// min(BaseDelay * Multiplier^n, MaxDelay), then spread by ±Jitter. As in
// gRPC, the jitter applies after the cap, so a capped delay lies within
// MaxDelay ±Jitter. Zero fields take the defaults.
type BackoffConfig struct {
	BaseDelay  time.Duration // default 1s
	Multiplier float64       // default 1.6
	Jitter     float64       // fraction, default 0.2 (±20%)
	MaxDelay   time.Duration // default 120s
	// ResetAfter: a session that stayed up at least this long (after
	// Welcome) starts the schedule again from BaseDelay. Default 10s.
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

func (b BackoffConfig) withDefaults() BackoffConfig {
	if b.BaseDelay <= 0 {
		b.BaseDelay = DefaultBaseDelay
	}
	if b.Multiplier < 1 {
		b.Multiplier = DefaultMultiplier
	}
	if b.Jitter <= 0 || b.Jitter >= 1 {
		b.Jitter = DefaultJitter
	}
	if b.MaxDelay <= 0 {
		b.MaxDelay = DefaultMaxDelay
	}
	if b.MaxDelay < b.BaseDelay {
		b.MaxDelay = b.BaseDelay
	}
	if b.ResetAfter <= 0 {
		b.ResetAfter = DefaultResetAfter
	}
	return b
}

// Schedule is the delay before attempt n without jitter.
func (b BackoffConfig) Schedule(attempt int) time.Duration {
	b = b.withDefaults()
	d := float64(b.BaseDelay)
	for i := 0; i < attempt && d < float64(b.MaxDelay); i++ {
		d *= b.Multiplier
	}
	return time.Duration(min(d, float64(b.MaxDelay)))
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
