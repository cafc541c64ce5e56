# One daemon-reload after any Airflow unit file changed (unit files add themselves via onchanges_in).
airflow-systemd-daemon-reload:
  module.run:
    - service.systemctl_reload: []
