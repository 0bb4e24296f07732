from .registry import Registry, check_availability
from .tools import (
    atomic_open,
    check_isfile,
    collect_env_info,
    count_num_param,
    listdir_nohidden,
    mkdir_if_missing,
    read_json,
    set_random_seed,
    write_json,
)
