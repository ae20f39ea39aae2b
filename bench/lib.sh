# Shell helpers shared by the bench scripts (sourced, not run). Needs $run_dir.

# The http{} settings of every nginx the benches start (upstream and proxy): no access log,
# long-lived keep-alive, and temp paths inside the run directory (nginx would otherwise write
# under /var/lib/nginx).
nginx_common() {
    cat <<CONF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $run_dir/tmp;
    proxy_temp_path $run_dir/tmp;
    fastcgi_temp_path $run_dir/tmp;
    uwsgi_temp_path $run_dir/tmp;
    scgi_temp_path $run_dir/tmp;
CONF
}
