// Package deploytest checks the operators' kit under deploy/ against the
// real code: every metric the Grafana dashboard and the Prometheus alert
// rules query exists in a live /metrics scrape of real observers (with the
// labels the queries use), the dashboard is a well-formed Grafana model,
// promtool accepts the rules, their unit tests and a live scrape, a real
// Prometheus evaluates every dashboard query and alert without error, the
// example configs pass the real config loader, and the systemd units are
// what the docs say. The package has tests only.
package deploytest
