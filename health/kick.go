package health

// Kick probes one member now instead of at its next interval; see
// Runner.Kick.
func (m *Monitor) Kick(group, member string) {
	if m.runner != nil {
		m.runner.Kick(group, member)
	}
}
