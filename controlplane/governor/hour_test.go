package governor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHourWindow(t *testing.T) {
	at := func(min int) time.Time { return now.Add(time.Duration(min) * time.Minute) }
	tests := []struct {
		name   string
		adds   []int // minutes after now
		query  int   // minutes after now
		limit  int
		count  int
		freeAt int // minutes after now
	}{
		{name: "empty", query: 0, limit: 3, count: 0, freeAt: 0},
		{name: "below the limit", adds: []int{0, 10}, query: 20, limit: 3, count: 2, freeAt: 20},
		{name: "at the limit: free when the oldest leaves", adds: []int{0, 10, 20}, query: 30, limit: 3, count: 3, freeAt: 60},
		{name: "over the limit: the second oldest", adds: []int{0, 10, 20, 25}, query: 30, limit: 3, count: 4, freeAt: 70},
		{name: "a start leaves exactly an hour later", adds: []int{0, 10}, query: 60, limit: 2, count: 1, freeAt: 60},
		{name: "just before the hour it still counts", adds: []int{0, 10}, query: 59, limit: 2, count: 2, freeAt: 60},
		{name: "out of order adds (a rebuild)", adds: []int{20, 0, 10}, query: 30, limit: 3, count: 3, freeAt: 60},
		{name: "old starts are pruned", adds: []int{-120, -90, 0, 5}, query: 10, limit: 2, count: 2, freeAt: 60},
		{name: "equal starts", adds: []int{5, 5, 5}, query: 6, limit: 2, count: 3, freeAt: 65},
		{name: "a start after now (clock stepped back) counts", adds: []int{10}, query: 0, limit: 1, count: 1, freeAt: 70},
		{name: "no limit", adds: []int{0, 1, 2}, query: 3, limit: 0, count: 3, freeAt: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h HourWindow
			for _, m := range tt.adds {
				h.Add(at(m))
			}
			require.Equal(t, tt.count, h.Count(at(tt.query)))
			require.Equal(t, at(tt.freeAt), h.FreeAt(at(tt.query), tt.limit))
			require.LessOrEqual(t, len(h.starts), len(tt.adds))
		})
	}
}

func TestHourWindowBounded(t *testing.T) {
	var h HourWindow
	for i := range 10_000 {
		h.Add(now.Add(time.Duration(i) * time.Minute))
	}
	require.Equal(t, 60, h.Count(now.Add(9999*time.Minute)))
	require.LessOrEqual(t, len(h.starts), 60, "only the last hour is kept")
}

// The window and the governor together: a policy with maxPerHour 3 starts
// 3 tasks, the 4th waits until the first is an hour old.
func TestHourWindowWithDecide(t *testing.T) {
	var h HourWindow
	in := base()
	in.MaxPerHour = 3
	for i := range 3 {
		in.Now = now.Add(time.Duration(i) * time.Minute)
		in.StartedLastHour, in.PerHourFreeAt = h.Count(in.Now), h.FreeAt(in.Now, in.MaxPerHour)
		require.True(t, Decide(in).Act)
		h.Add(in.Now)
	}
	in.Now = now.Add(10 * time.Minute)
	in.StartedLastHour, in.PerHourFreeAt = h.Count(in.Now), h.FreeAt(in.Now, in.MaxPerHour)
	d := Decide(in)
	require.Equal(t, RuleMaxPerHour, d.Rule)
	require.Equal(t, now.Add(time.Hour), d.RetryAt)
	require.Equal(t, "max_per_hour: 3 of 3 tasks of policy web started in the last hour; next slot in 50m", d.Reason)

	in.Now = d.RetryAt
	in.StartedLastHour, in.PerHourFreeAt = h.Count(in.Now), h.FreeAt(in.Now, in.MaxPerHour)
	require.True(t, Decide(in).Act)
}
