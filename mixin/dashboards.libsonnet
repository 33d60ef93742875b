// The dashboard as python -m generate dashboard writes it (a copy, generated too); its
// job, instance and app are variables chosen in Grafana, so _config does not change it.
{
  grafanaDashboards+:: {
    'gunicorn.json': import 'dashboards/gunicorn.json',
  },
}
