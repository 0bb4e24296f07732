from .errors import InvalidInputError, UnreadableFileError, UnwritableFileError, UserError
from .logger import close_logger, setup_logger
from .meters import AverageMeter, MetricMeter
from .registry import Registry, UnknownNameError, check_availability
from .tools import (
    atomic_open,
    check_isfile,
    collect_env_info,
    count_num_param,
    create_temp_file,
    listdir_nohidden,
    mkdir_if_missing,
    read_json,
    set_random_seed,
    write_json,
)
from .torchtools import (
    get_rng_state,
    load_checkpoint,
    load_pretrained_weights,
    open_specified_layers,
    resume_from_checkpoint,
    save_checkpoint,
    set_rng_state,
    tolist_if_not,
)
