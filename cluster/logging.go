package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// hclogAdapter sends hashicorp/raft's hclog output into our slog logger so
// that all of an observer's output is one structured stream.
type hclogAdapter struct {
	l    *slog.Logger
	name string
	args []interface{}
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHCLog(l *slog.Logger, name string) hclog.Logger {
	return &hclogAdapter{l: l.With("component", name), name: name}
}

func toSlogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...interface{}) {
	lvl := toSlogLevel(level)
	if !a.l.Enabled(context.Background(), lvl) {
		return
	}
	all := append(append([]interface{}{}, a.args...), args...)
	for i, v := range all {
		// hclog.Fmt values ("servers", hclog.Fmt("%+v", servers)) are a
		// format and its arguments: format them, as hclog would.
		if f, ok := v.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				all[i] = fmt.Sprintf(format, f[1:]...)
			}
		}
	}
	a.l.Log(context.Background(), lvl, msg, all...)
}

func (a *hclogAdapter) Trace(msg string, args ...interface{}) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...interface{}) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...interface{})  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...interface{})  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...interface{}) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) enabled(l slog.Level) bool { return a.l.Enabled(context.Background(), l) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(slog.LevelDebug) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(slog.LevelDebug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(slog.LevelInfo) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(slog.LevelWarn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(slog.LevelError) }

func (a *hclogAdapter) ImpliedArgs() []interface{} { return a.args }

func (a *hclogAdapter) With(args ...interface{}) hclog.Logger {
	return &hclogAdapter{l: a.l, name: a.name, args: append(append([]interface{}{}, a.args...), args...)}
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	n := name
	if a.name != "" {
		n = a.name + "." + name
	}
	return &hclogAdapter{l: a.l.With("sub", name), name: n, args: a.args}
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return &hclogAdapter{l: a.l, name: name, args: a.args}
}

// SetLevel is ignored: the level is the slog handler's.
func (a *hclogAdapter) SetLevel(hclog.Level) {}

func (a *hclogAdapter) GetLevel() hclog.Level {
	switch {
	case a.enabled(slog.LevelDebug):
		return hclog.Debug
	case a.enabled(slog.LevelInfo):
		return hclog.Info
	case a.enabled(slog.LevelWarn):
		return hclog.Warn
	default:
		return hclog.Error
	}
}

func (a *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return newStdLog(a.l)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &stdLogWriter{l: a.l}
}

// newStdLog adapts libraries that want a *log.Logger (memberlist). Their
// lines look like "[WARN] memberlist: text"; the bracketed level is kept.
func newStdLog(l *slog.Logger) *log.Logger {
	return log.New(&stdLogWriter{l: l}, "", 0)
}

type stdLogWriter struct{ l *slog.Logger }

func (w *stdLogWriter) Write(p []byte) (int, error) {
	lvl, msg := parseStdLogLine(p)
	w.l.Log(context.Background(), lvl, msg)
	return len(p), nil
}

// stdLogLevels maps the bracketed level of a standard log line to ours.
var stdLogLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
}

// parseStdLogLine splits "[WARN] memberlist: text" into its level and
// text (Info when there is no bracketed level).
func parseStdLogLine(p []byte) (slog.Level, string) {
	msg := string(bytes.TrimSpace(p))
	for _, l := range stdLogLevels {
		if strings.HasPrefix(msg, l.prefix) {
			return l.level, strings.TrimSpace(strings.TrimPrefix(msg, l.prefix))
		}
	}
	return slog.LevelInfo, msg
}

// Limits of memberlistLog: per kind of message, a burst of
// memberlistLogBurst lines, then memberlistLogRate lines per second; what
// is suppressed is summed up in one line at most every
// memberlistLogSummaryEvery.
const (
	memberlistLogBurst        = 5
	memberlistLogRate         = 1.0
	memberlistLogSummaryEvery = 10 * time.Second
	// memberlistLogKinds bounds the kinds tracked; further ones share one.
	memberlistLogKinds = 64
	// memberlistLogMaxLine bounds one line (labels in it come from packets).
	memberlistLogMaxLine = 512
)

// memberlistLog adapts memberlist's *log.Logger output to our logger with
// a rate limit per kind of message: a flood of bad packets at the gossip
// port, each of which memberlist reports with an ERR line, writes a few
// lines a second and a periodic "suppressed N" line, not one line per
// packet. Every warning and error is counted in
// vigil_gossip_packet_errors_total, suppressed or not.
type memberlistLog struct {
	l      *slog.Logger
	now    func() time.Time
	errors *prometheus.CounterVec

	mu    sync.Mutex
	kinds map[string]*logKind
}

// logKind is the rate limit state of one kind of message.
type logKind struct {
	level      slog.Level
	tokens     float64
	refilled   time.Time
	suppressed int
	// since is when the first line not yet summed up was suppressed.
	since time.Time
}

func newMemberlistLog(l *slog.Logger, errors *prometheus.CounterVec, now func() time.Time) *memberlistLog {
	return &memberlistLog{l: l, now: now, errors: errors, kinds: map[string]*logKind{}}
}

// logger returns the *log.Logger to give memberlist.
func (w *memberlistLog) logger() *log.Logger { return log.New(w, "", 0) }

func (w *memberlistLog) Write(p []byte) (int, error) {
	lvl, msg := parseStdLogLine(p)
	if lvl >= slog.LevelWarn {
		w.errors.WithLabelValues(packetErrorKind(msg)).Inc()
	}
	if !w.l.Enabled(context.Background(), lvl) {
		return len(p), nil
	}
	now := w.now()
	kind := memberlistLogKind(msg)
	w.mu.Lock()
	k, ok := w.kinds[kind]
	if !ok && len(w.kinds) >= memberlistLogKinds {
		kind = "other"
		k, ok = w.kinds[kind]
	}
	if !ok {
		k = &logKind{tokens: memberlistLogBurst, refilled: now}
		w.kinds[kind] = k
	}
	if now.After(k.refilled) {
		k.tokens = min(memberlistLogBurst, k.tokens+now.Sub(k.refilled).Seconds()*memberlistLogRate)
		k.refilled = now
	}
	k.level = max(k.level, lvl)
	emit := k.tokens >= 1
	if emit {
		k.tokens--
	} else {
		if k.suppressed == 0 {
			k.since = now
		}
		k.suppressed++
	}
	summary := w.summaryLocked(kind, k, now)
	w.mu.Unlock()
	if emit {
		if len(msg) > memberlistLogMaxLine {
			msg = msg[:memberlistLogMaxLine] + "…"
		}
		w.l.Log(context.Background(), lvl, msg)
	}
	if summary != nil {
		summary()
	}
	return len(p), nil
}

// summaryLocked returns the logging of a kind's "suppressed N" line when
// one is due, and resets the count; nil when none is due.
func (w *memberlistLog) summaryLocked(kind string, k *logKind, now time.Time) func() {
	if k.suppressed == 0 || now.Sub(k.since) < memberlistLogSummaryEvery {
		return nil
	}
	n, since, lvl := k.suppressed, k.since, k.level
	k.suppressed = 0
	return func() {
		w.l.Log(context.Background(), lvl, "memberlist: suppressed similar log lines", "kind", kind, "suppressed", n,
			"over", now.Sub(since).Round(time.Millisecond).String())
	}
}

// flush writes the "suppressed N" lines that are due (call it
// periodically: a flood that stopped leaves no line to piggyback on).
func (w *memberlistLog) flush() {
	now := w.now()
	var out []func()
	w.mu.Lock()
	for kind, k := range w.kinds {
		if f := w.summaryLocked(kind, k, now); f != nil {
			out = append(out, f)
		}
		if k.suppressed == 0 && now.Sub(k.refilled) > time.Minute {
			delete(w.kinds, kind) // idle: forget it, so new kinds find room
		}
	}
	w.mu.Unlock()
	for _, f := range out {
		f()
	}
}

// memberlistLogKind is the constant part of a memberlist message: its
// text up to the first detail (address, number, quoted label, error), so
// that lines differing only by sender or content share one rate limit.
func memberlistLogKind(msg string) string {
	msg = strings.TrimPrefix(msg, "memberlist: ")
	if i := strings.IndexAny(msg, ":\"'(%=0123456789"); i >= 0 {
		msg = msg[:i]
	}
	msg = strings.TrimSpace(msg)
	if len(msg) > 48 {
		msg = msg[:48]
	}
	if msg == "" {
		return "other"
	}
	return msg
}

// packetErrorKind sorts memberlist's warnings and errors into the small
// fixed set of vigil_gossip_packet_errors_total's kind label.
func packetErrorKind(msg string) string {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "label"):
		return "label"
	case strings.Contains(m, "decrypt"):
		return "decrypt"
	case strings.Contains(m, "decode"), strings.Contains(m, "invalid"), strings.Contains(m, "not supported"),
		strings.Contains(m, "missing message type"), strings.Contains(m, "checksum"), strings.Contains(m, "truncated"),
		strings.Contains(m, "decompress"), strings.Contains(m, "unexpected"):
		return "malformed"
	default:
		return "other"
	}
}

// limitedLog logs at most rate lines per second in total (burst lines at
// once), for lines an outsider can trigger at will, such as refused
// connections: a flood costs a few lines a second, not a full disk. The
// lines beyond the rate are counted, and one "suppressed" line a second
// later says how many there were.
type limitedLog struct {
	l           *slog.Logger
	rate, burst float64
	now         func() time.Time
	after       func(time.Duration, func()) // time.AfterFunc, replaceable in tests

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
	pending    bool // a summary is scheduled
}

func newLimitedLog(l *slog.Logger, perSecond float64, burst int) *limitedLog {
	return &limitedLog{l: l, rate: perSecond, burst: float64(burst), tokens: float64(burst), now: time.Now,
		after: func(d time.Duration, f func()) { time.AfterFunc(d, f) }}
}

// Log writes one line, unless the rate is exceeded.
func (r *limitedLog) Log(level slog.Level, msg string, args ...any) {
	if !r.l.Enabled(context.Background(), level) {
		return
	}
	r.mu.Lock()
	now := r.now()
	if r.last.IsZero() {
		r.last = now
	}
	r.tokens = min(r.burst, r.tokens+now.Sub(r.last).Seconds()*r.rate)
	r.last = now
	if r.tokens < 1 {
		r.suppressed++
		schedule := !r.pending
		r.pending = true
		r.mu.Unlock()
		if schedule {
			r.after(time.Second, r.summary)
		}
		return
	}
	r.tokens--
	r.mu.Unlock()
	r.l.Log(context.Background(), level, msg, args...)
}

// summary reports the lines suppressed since the last summary.
func (r *limitedLog) summary() {
	r.mu.Lock()
	n := r.suppressed
	r.suppressed, r.pending = 0, false
	r.mu.Unlock()
	if n > 0 {
		r.l.Warn("suppressed log lines: too many in a short time", "suppressed", n, "max_per_second", r.rate)
	}
}
