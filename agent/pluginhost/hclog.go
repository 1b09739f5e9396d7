package pluginhost

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// hclogger adapts an slog.Logger to the hclog.Logger that go-plugin logs
// to: its own messages, and the plugins' log lines it parses from their
// stderr.
type hclogger struct {
	log     *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*hclogger)(nil)

func newHCLogger(l *slog.Logger) hclog.Logger { return &hclogger{log: l} }

func slogLevel(l hclog.Level) (slog.Level, bool) {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4, true
	case hclog.Debug:
		return slog.LevelDebug, true
	case hclog.Info, hclog.NoLevel:
		return slog.LevelInfo, true
	case hclog.Warn:
		return slog.LevelWarn, true
	case hclog.Error:
		return slog.LevelError, true
	}
	return 0, false
}

func (h *hclogger) Log(level hclog.Level, msg string, args ...any) {
	// go-plugin says this at Error whenever a plugin's process ends,
	// including when the host kills it on purpose; the host logs crashes
	// and kills itself.
	if msg == "plugin process exited" && level > hclog.Warn {
		level = hclog.Warn
	}
	l, ok := slogLevel(level)
	if !ok || !h.log.Enabled(context.Background(), l) {
		return
	}
	attrs := make([]any, 0, len(h.implied)+len(args)+2)
	if h.name != "" {
		attrs = append(attrs, "logger", h.name)
	}
	attrs = append(attrs, h.implied...)
	for i := 0; i+1 < len(args); i += 2 {
		// go-plugin adds the plugin's own timestamp; slog has one.
		if k, ok := args[i].(string); ok && k == "timestamp" {
			continue
		}
		attrs = append(attrs, args[i], args[i+1])
	}
	if len(args)%2 == 1 {
		attrs = append(attrs, "extra", args[len(args)-1])
	}
	h.log.Log(context.Background(), l, msg, attrs...)
}

func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogger) enabled(l slog.Level) bool { return h.log.Enabled(context.Background(), l) }

func (h *hclogger) IsTrace() bool { return h.enabled(slog.LevelDebug - 4) }
func (h *hclogger) IsDebug() bool { return h.enabled(slog.LevelDebug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(slog.LevelInfo) }
func (h *hclogger) IsWarn() bool  { return h.enabled(slog.LevelWarn) }
func (h *hclogger) IsError() bool { return h.enabled(slog.LevelError) }

func (h *hclogger) ImpliedArgs() []any { return h.implied }

func (h *hclogger) With(args ...any) hclog.Logger {
	c := *h
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hclogger) Name() string { return h.name }

func (h *hclogger) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (h *hclogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler decides.
func (h *hclogger) SetLevel(hclog.Level) {}

func (h *hclogger) GetLevel() hclog.Level {
	switch {
	case h.IsTrace():
		return hclog.Trace
	case h.IsDebug():
		return hclog.Debug
	case h.IsInfo():
		return hclog.Info
	case h.IsWarn():
		return hclog.Warn
	case h.IsError():
		return hclog.Error
	}
	return hclog.Off
}

func (h *hclogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &lineWriter{log: h.log, level: slog.LevelInfo, msg: "plugin host"}
}

// lineWriter logs each line written to it; go-plugin copies a plugin's
// stdout and stderr (after the handshake) to it.
type lineWriter struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	attrs []any

	mu  sync.Mutex
	buf []byte
}

const maxLogLine = 4096

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) > maxLogLine {
				w.emit(w.buf)
				w.buf = w.buf[:0]
			}
			return len(b), nil
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriter) emit(line []byte) {
	s := strings.TrimRight(string(line), "\r")
	if s == "" {
		return
	}
	if len(s) > maxLogLine {
		s = s[:maxLogLine]
	}
	w.log.Log(context.Background(), w.level, w.msg, append(append([]any(nil), w.attrs...), "line", strings.ToValidUTF8(s, "\uFFFD"))...)
}
