package checks

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestCleanText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain\nlines\tand tabs", "plain\nlines\tand tabs"},
		{"esc \x1b[2J clear", `esc \x1b[2J clear`},
		{"cr\r\n", `cr\x0d` + "\n"},
		{"bad \xff utf8", "bad \uFFFD utf8"},
		{"c1 \u0085 control", `c1 \x85 control`},
		{"unicode ok: é ✓", "unicode ok: é ✓"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, cleanText([]byte(tt.in)), "%q", tt.in)
	}
}

func FuzzCleanText(f *testing.F) {
	f.Add([]byte("ok\x1b\xff\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := cleanText(b)
		require.True(t, utf8.ValidString(s))
		require.False(t, strings.ContainsAny(s, "\x1b\r\x00"))
	})
}

func TestQuote(t *testing.T) {
	require.Equal(t, `"nginx"`, quote("nginx"))
	require.Equal(t, `"a\x1b[2Jb"`, quote("a\x1b[2Jb"))
	long := quote(strings.Repeat("x", 1000))
	require.Less(t, len(long), 300)
	require.True(t, strings.HasSuffix(long, "…"))
}

func TestCappedBuffer(t *testing.T) {
	c := newCappedBuffer(10)
	n, err := c.Write([]byte("0123456"))
	require.NoError(t, err)
	require.Equal(t, 7, n)
	n, err = c.Write([]byte("789abcdef"))
	require.NoError(t, err)
	require.Equal(t, 9, n, "writes always succeed")
	b, dropped := c.Bytes()
	require.Equal(t, "0123456789", string(b))
	require.Equal(t, int64(6), dropped)
}

func TestTruncate(t *testing.T) {
	require.Equal(t, "short", Truncate("short"))
	s := Truncate(strings.Repeat("é", MaxOutput))
	require.LessOrEqual(t, len(s), MaxOutput)
	require.True(t, utf8.ValidString(s))
	require.True(t, strings.HasSuffix(s, "[truncated]"))
}

func TestTimeoutOf(t *testing.T) {
	start := time.Now()
	ctx, cancel := WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	require.Equal(t, 1500*time.Millisecond, timeoutOf(ctx, start.Add(time.Second)), "the recorded timeout, however late the check starts")

	plain, cancel2 := context.WithDeadline(context.Background(), start.Add(2*time.Second))
	defer cancel2()
	require.Equal(t, 2*time.Second, timeoutOf(plain, start))

	require.Less(t, timeoutOf(context.Background(), time.Now()), time.Second)
}
