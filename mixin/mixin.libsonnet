// The gunicorn-exporter monitoring mixin: recording rules, alerts (with runbooks) and the
// Grafana dashboard, the same as alerts/gunicorn.rules.yml and
// grafana/dashboards/gunicorn.json, with one _config (config.libsonnet: the job selector,
// the runbook address, every alert's `for`, severity and thresholds).
//
//   local gunicorn = (import 'gunicorn-exporter-mixin/mixin.libsonnet') + {
//     _config+:: { selector: 'job="gunicorn-prod"' },
//   };
//
// Everything but this file and dashboards.libsonnet is generated (`python -m generate
// mixin`) from alerts/config.toml and generate/.
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
