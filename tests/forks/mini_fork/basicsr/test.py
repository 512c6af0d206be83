import os

from basicsr.data import create_dataloader, create_dataset
from basicsr.models import create_model
from basicsr.train import parse_options
from basicsr.utils import get_root_logger, make_exp_dirs


def main():
    opt = parse_options(is_train=False)
    make_exp_dirs(opt)
    logger = get_root_logger(log_file=os.path.join(opt['path']['log'], 'test.log'))
    model = create_model(opt)
    for phase, dataset_opt in sorted(opt['datasets'].items()):
        if 'test' in phase:
            dataset_opt['phase'] = 'test'
            loader = create_dataloader(create_dataset(dataset_opt), dataset_opt)
            psnr = model.validation(loader, 0)
            logger.info(f"Test {dataset_opt['name']} psnr: {psnr:.4f}")


if __name__ == '__main__':
    main()
