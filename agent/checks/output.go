package checks

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Shorthands for the statuses, used by every check type.
const (
	statusOK       = agentv1.CheckStatus_CHECK_STATUS_OK
	statusWarning  = agentv1.CheckStatus_CHECK_STATUS_WARNING
	statusCritical = agentv1.CheckStatus_CHECK_STATUS_CRITICAL
	statusUnknown  = agentv1.CheckStatus_CHECK_STATUS_UNKNOWN
)

// result builds a Result with a formatted output.
func result(status agentv1.CheckStatus, metrics map[string]float64, format string, args ...any) Result {
	return Result{Status: status, Output: Truncate(fmt.Sprintf(format, args...)), Metrics: metrics}
}

// quote renders a string that came from the host (a process name, a file's
// content) or from a spec for a human: quoted, with every non-printable
// rune and invalid UTF-8 byte escaped, so it can never smuggle control
// sequences into a terminal or a log. Long strings are cut at 256 bytes.
func quote(s string) string {
	const limit = 256
	cut := ""
	if len(s) > limit {
		s, cut = s[:limit], "…"
	}
	return strconv.QuoteToGraphic(s) + cut
}

// cleanText makes arbitrary bytes (a command's output, an HTTP body) safe
// to carry and show: valid UTF-8, as a protobuf string field must be, with
// newlines and tabs kept and every other control character escaped (\x1b),
// so output cannot drive the terminal of whoever reads it.
func cleanText(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b))
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && size == 1:
			sb.WriteRune(utf8.RuneError)
		case r == '\n' || r == '\t':
			sb.WriteRune(r)
		case unicode.IsControl(r):
			if r < 0x100 {
				fmt.Fprintf(&sb, `\x%02x`, r)
			} else {
				fmt.Fprintf(&sb, `\u%04x`, r)
			}
		default:
			sb.WriteRune(r)
		}
		b = b[size:]
	}
	return sb.String()
}

// cappedBuffer keeps the first max bytes written to it and counts (but
// drops) the rest, so a check never buffers unbounded output. Writes always
// succeed, so the writer on the other end is never killed by EPIPE.
type cappedBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped int64
}

func newCappedBuffer(max int) *cappedBuffer { return &cappedBuffer{max: max} }

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - len(c.buf)
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		c.buf = append(c.buf, p[:room]...)
	}
	c.dropped += int64(len(p) - room)
	return len(p), nil
}

// Bytes returns what was kept and how many bytes were dropped.
func (c *cappedBuffer) Bytes() ([]byte, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf...), c.dropped
}

// timeoutKey carries a run's timeout in its context (see WithTimeout).
type timeoutKey struct{}

// WithTimeout is context.WithTimeout that also records d, so a check that
// times out can say "timed out after d" with the configured value rather
// than the time left when it started. The scheduler runs checks with it.
func WithTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	return context.WithValue(ctx, timeoutKey{}, d), cancel
}

// timeoutOf says how long a run had, for messages like "timed out after
// 2s": the timeout recorded by WithTimeout, else the time from start to the
// context's deadline, else the time since start.
func timeoutOf(ctx context.Context, start time.Time) time.Duration {
	if d, ok := ctx.Value(timeoutKey{}).(time.Duration); ok {
		return d
	}
	if dl, ok := ctx.Deadline(); ok {
		return dl.Sub(start).Round(time.Millisecond)
	}
	return time.Since(start).Round(time.Millisecond)
}

// humanBytes renders a byte count with a binary unit.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
