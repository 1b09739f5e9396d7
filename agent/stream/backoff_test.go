package stream

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoffSchedule(t *testing.T) {
	var b BackoffConfig // defaults: 1s ×1.6, max 120s, ±20%
	want := []time.Duration{
		1 * time.Second,
		1600 * time.Millisecond,
		2560 * time.Millisecond,
		4096 * time.Millisecond,
		6553600 * time.Microsecond,
	}
	for n, w := range want {
		require.InDelta(t, float64(w), float64(b.Schedule(n)), float64(time.Microsecond), "attempt %d", n)
	}
	// 1.6^11 ≈ 176 > 120: capped from attempt 11 on.
	require.Less(t, b.Schedule(10), 120*time.Second)
	for _, n := range []int{11, 12, 50, 1000, 1 << 30} {
		require.Equal(t, 120*time.Second, b.Schedule(n), "attempt %d", n)
	}
	for n := 1; n < 20; n++ {
		require.GreaterOrEqual(t, b.Schedule(n), b.Schedule(n-1), "the schedule never shrinks")
	}
}

func TestBackoffJitterEnvelope(t *testing.T) {
	var b BackoffConfig
	for n := 0; n < 30; n++ {
		s := float64(b.Schedule(n))
		lo, hi := 0.8*s, 1.2*s
		for _, r := range []float64{0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999999} {
			d := float64(b.Delay(n, r))
			require.GreaterOrEqual(t, d, lo-1, "attempt %d r %v", n, r)
			require.LessOrEqual(t, d, hi, "attempt %d r %v", n, r)
		}
		require.InDelta(t, s, float64(b.Delay(n, 0.5)), 1, "r=0.5 is the schedule")
		require.InDelta(t, lo, float64(b.Delay(n, 0)), 1, "r=0 is -20%")
		require.InDelta(t, hi, float64(b.Delay(n, 1)), 2, "r=1 is +20%")
	}
	// Capped: within 120s ±20%.
	require.InDelta(t, float64(96*time.Second), float64(b.Delay(100, 0)), 1)
	require.InDelta(t, float64(144*time.Second), float64(b.Delay(100, 1)), 2)
	// Out-of-range r is clamped.
	require.Equal(t, b.Delay(3, 0), b.Delay(3, -5))
	require.Equal(t, b.Delay(3, 1), b.Delay(3, 7))
}

func TestBackoffCustom(t *testing.T) {
	b := BackoffConfig{Base: 10 * time.Millisecond, Multiplier: 2, Jitter: 0.1, Max: 50 * time.Millisecond}
	got := []time.Duration{}
	for n := 0; n < 5; n++ {
		got = append(got, b.Schedule(n))
	}
	require.Equal(t, []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}, got)
	require.Equal(t, 45*time.Millisecond, b.Delay(9, 0))
	require.Equal(t, BackoffConfig{Base: time.Second, Multiplier: 1.6, Jitter: 0.2, Max: 120 * time.Second, ResetAfter: 10 * time.Second}, DefaultBackoff())
}
