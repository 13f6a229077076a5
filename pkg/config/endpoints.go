package config

import "time"

// Endpoints lists every endpoint the notifier delivers to: the webhooks,
// then the usage hook (when enabled) as one more endpoint named
// "usage_hook". The usage hook's retry counts retries after the first
// attempt, so its MaxAttempts is retry+1; its timeout defaults to 5s and
// its max age to 24h.
func (c *Config) Endpoints() []Webhook {
	out := make([]Webhook, 0, len(c.Webhooks)+1)
	out = append(out, c.Webhooks...)
	if u := c.UsageHook; u.IsEnabled() {
		timeout := u.Timeout
		if timeout == 0 {
			timeout = Duration(5 * time.Second)
		}
		out = append(out, Webhook{
			Name:        UsageHookName,
			URL:         u.URL,
			Secret:      u.Secret,
			Timeout:     timeout,
			MaxAttempts: max(u.Retry, 0) + 1,
			MaxAge:      Duration(24 * time.Hour),
			BackoffMax:  Duration(5 * time.Minute),

			Unauthenticated: u.Unauthenticated,
			TLS:             u.TLS,
		})
	}
	return out
}
